//! The `witness-reflector` binary.

fn main() -> std::process::ExitCode {
    witness_reflector::main()
}
