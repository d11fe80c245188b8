// Child processes for tests and benchmarks: start a program with its stdout
// on a pipe, read its lines, stop it. POSIX only.
#ifndef STUBKIT_TESTS_PROCESS_HPP
#define STUBKIT_TESTS_PROCESS_HPP

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace stubkit_tests {

/// A running child process whose stdout we read. Killed (SIGKILL) and
/// reaped on destruction unless stopped before.
class Process {
 public:
  // posix_spawn, not fork: gRPC registers pthread_atfork handlers, and
  // forking a process with live gRPC threads trips its assertions
  // (posix_spawn runs no atfork handlers).
  /// Starts `args`; with `capture_stderr` its standard error is read
  /// with read_line too, interleaved with standard output.
  explicit Process(std::vector<std::string> args, bool capture_stderr = false) {
    int fds[2];
    if (pipe(fds) != 0) std::abort();
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    if (capture_stderr) posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    posix_spawn_file_actions_addclose(&actions, fds[1]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    out_ = fdopen(fds[0], "r");
  }
  ~Process() {
    stop(SIGKILL);
    if (out_ != nullptr) fclose(out_);
  }
  Process(Process const&) = delete;
  Process& operator=(Process const&) = delete;

  /// The process id, or -1 once it was reaped.
  pid_t pid() const { return pid_; }

  /// The next line of stdout, without its newline ("" at the end).
  std::string read_line() {
    char buf[512];
    if (fgets(buf, sizeof buf, out_) == nullptr) return "";
    std::string line(buf);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    return line;
  }

  /// Sends `signal` and reaps the process; returns its wait status.
  int stop(int signal = SIGTERM) {
    if (pid_ <= 0) return status_;
    kill(pid_, signal);
    waitpid(pid_, &status_, 0);
    pid_ = -1;
    return status_;
  }

  /// Waits for the process to exit by itself.
  int wait() {
    if (pid_ > 0) {
      waitpid(pid_, &status_, 0);
      pid_ = -1;
    }
    return status_;
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  int status_ = 0;
};

/// A memory figure of process `pid` from /proc/PID/status, in KiB: "VmRSS"
/// (resident now) or "VmHWM" (peak resident). -1 if unknown.
inline long status_kib(pid_t pid, std::string const& field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::strtol(line.c_str() + field.size() + 1, nullptr, 10);
  }
  return -1;
}

/// The resident set size of process `pid` in KiB (-1 if unknown).
inline long rss_kib(pid_t pid) { return status_kib(pid, "VmRSS"); }

/// Starts user_server with `flags` on a free port; returns its address.
inline std::string start_user_server(Process& server) {
  std::string const line = server.read_line();
  auto const space = line.rfind(' ');
  return line.rfind("listening on ", 0) == 0 && space != std::string::npos ? line.substr(space + 1) : "";
}

}  // namespace stubkit_tests

#endif  // STUBKIT_TESTS_PROCESS_HPP
