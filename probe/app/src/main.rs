//! The `witness` probe binary.
fn main() -> std::process::ExitCode {
    witness_app::cli::main()
}
