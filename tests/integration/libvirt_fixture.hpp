// Fixtures for tests against real libvirt: a temp dir, a bounded poll, and
// an unprivileged session libvirtd sharing `test:///default` between
// processes (the recipe in ENVIRONMENT.md). Everything cleans up after itself.
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace vmgate::test {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "vmgate-test-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Polls until `done()` or the bound passes; the bound is a safety net for a
// broken build, never a timing assertion.
template <class Predicate>
bool poll_until(Predicate done, std::chrono::milliseconds bound = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + bound;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// Starts argv[0] (searched in PATH) with stdout and stderr appended to `output`.
inline pid_t spawn(const std::vector<std::string>& args, const std::filesystem::path& output) {
  std::vector<char*> argv;
  for (const auto& arg : args)
    argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, output.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("cannot start " + args[0] + ": " + std::strerror(rc));
  return pid;
}

// Runs a command to completion; returns its exit status (-1 if killed).
inline int run(const std::vector<std::string>& args, const std::filesystem::path& output) {
  pid_t pid = spawn(args, output);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

inline bool unix_socket_accepts(const std::filesystem::path& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
  bool accepted = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  close(fd);
  return accepted;
}

// libvirtd in session mode as `nobody`, its sockets and state under `root`.
// Needs root (setpriv). `test:///default` lives as long as one client holds
// a connection to it, and starts afresh with each daemon.
class SessionLibvirtd {
 public:
  explicit SessionLibvirtd(std::filesystem::path root) : root_(std::move(root)) {
    const passwd* nobody = getpwnam("nobody");
    const group* nogroup = getgrnam("nogroup");
    if (nobody == nullptr || nogroup == nullptr) throw std::runtime_error("no nobody:nogroup");
    std::filesystem::permissions(root_, std::filesystem::perms(0755));
    for (const char* dir : {"home", "run", "cfg"}) {
      std::filesystem::create_directory(root_ / dir);
      if (chown((root_ / dir).c_str(), nobody->pw_uid, nogroup->gr_gid) != 0) {
        throw std::runtime_error("cannot chown " + (root_ / dir).string());
      }
    }
  }
  ~SessionLibvirtd() { stop(); }
  SessionLibvirtd(const SessionLibvirtd&) = delete;
  SessionLibvirtd& operator=(const SessionLibvirtd&) = delete;

  std::filesystem::path socket() const { return root_ / "run/libvirt/libvirt-sock"; }
  std::string uri() const { return "test+unix:///default?socket=" + socket().string(); }
  std::filesystem::path log_path() const { return root_ / "libvirtd.log"; }

  void start() {
    pid_ = spawn({"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "-i",
                  "PATH=/usr/sbin:/usr/bin", "HOME=" + (root_ / "home").string(),
                  "XDG_RUNTIME_DIR=" + (root_ / "run").string(),
                  "XDG_CONFIG_HOME=" + (root_ / "cfg").string(), "libvirtd", "--timeout", "120"},
                 log_path());
    if (!poll_until([&] { return unix_socket_accepts(socket()) || exited(); }) || exited()) {
      stop();
      throw std::runtime_error("libvirtd did not start; log:\n" + read_file(log_path()));
    }
  }

  void stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    if (!poll_until([&] { return exited(); })) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }

  // Runs `virsh -c URI args...`; returns its exit status, output in virsh.log.
  int virsh(std::vector<std::string> args) const {
    args.insert(args.begin(), {"virsh", "-q", "-c", uri()});
    return run(args, root_ / "virsh.log");
  }
  std::string virsh_log() const { return read_file(root_ / "virsh.log"); }

 private:
  bool exited() {
    int status = 0;
    return waitpid(pid_, &status, WNOHANG) == pid_;
  }

  std::filesystem::path root_;
  pid_t pid_ = -1;
};

}  // namespace vmgate::test
