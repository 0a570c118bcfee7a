/* ProcessPrng for Wine 8 (Debian 12's), which lacks bcryptprimitives.dll: Rust's standard
 * library takes its random numbers from there, as every Windows 10 and 11 has it. The Wine
 * test (tests/tests/windows_wine.rs) builds this with mingw-w64's gcc and puts it next to
 * witness.exe, where Windows looks for a DLL first; it is never shipped. It fills the buffer
 * with RtlGenRandom (advapi32's SystemFunction036), which Wine has. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG len);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
