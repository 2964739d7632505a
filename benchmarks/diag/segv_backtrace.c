/* LD_PRELOAD helper for benchmarks/gpu_final.sh's bad-input test runs: on SIGSEGV print the native stack (glibc's
 * backtrace_symbols_fd) to stderr, then die as before. For machines without gdb. Build:
 *   gcc -shared -fPIC -O0 -o /tmp/segv_backtrace.so benchmarks/diag/segv_backtrace.c */
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

static void on_segv(int sig) {
  void* frames[64];
  int count = backtrace(frames, 64);
  backtrace_symbols_fd(frames, count, STDERR_FILENO);
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) static void install(void) { signal(SIGSEGV, on_segv); }
