// A TCP proxy on loopback for tests that break one connection and not the
// others: each connection it accepts gets a connection of its own to the
// upstream address, and reset(i) ends connection i with a TCP reset on both
// sides, as a dying middlebox or peer would.
#ifndef STUBKIT_TESTS_TCP_PROXY_HPP
#define STUBKIT_TESTS_TCP_PROXY_HPP

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace stubkit_tests {

class TcpProxy {
 public:
  /// Listens on 127.0.0.1 (a free port) and forwards to 127.0.0.1:`upstream_port`.
  explicit TcpProxy(int upstream_port) : upstream_port_(upstream_port) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address = loopback(0);
    socklen_t length = sizeof address;
    if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        ::listen(listener_, 64) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) != 0 ||
        ::pipe2(wake_, O_CLOEXEC) != 0) {
      int const error = errno;
      close_all();
      throw std::runtime_error(std::string("TcpProxy: ") + std::strerror(error));
    }
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { run(); });
  }

  ~TcpProxy() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake();
    thread_.join();
    close_all();
  }
  TcpProxy(TcpProxy const&) = delete;
  TcpProxy& operator=(TcpProxy const&) = delete;

  /// "127.0.0.1:PORT", the address to dial instead of the upstream's.
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  /// How many connections it has accepted so far.
  std::size_t connections() const {
    std::lock_guard<std::mutex> lock(mu_);
    return pairs_.size();
  }

  /// Ends connection `i` (in the order accepted) with a TCP reset on both
  /// sides; returns once done. Throws std::out_of_range for an unknown `i`.
  void reset(std::size_t i) {
    std::unique_lock<std::mutex> lock(mu_);
    if (i >= pairs_.size()) throw std::out_of_range("TcpProxy::reset: no connection " + std::to_string(i));
    resets_.push_back(i);
    wake();
    done_.wait(lock, [&] { return dead_ || (pairs_[i].client < 0 && pairs_[i].upstream < 0); });
    if (dead_) throw std::runtime_error("TcpProxy: its thread ended (poll failed)");
  }

 private:
  struct Pair {
    int client = -1;
    int upstream = -1;
  };

  static sockaddr_in loopback(int port) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<std::uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return address;
  }

  void wake() {
    char const byte = 0;
    (void)!::write(wake_[1], &byte, 1);
  }

  // Closes `fd` with SO_LINGER 0: the kernel sends RST, not FIN.
  static void abort_socket(int& fd) {
    if (fd < 0) return;
    linger const hard{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
    ::close(fd);
    fd = -1;
  }

  // Writes all of `data` (blocking: both ends of a test's connections read
  // all the time). False when the peer is gone.
  static bool write_all(int fd, char const* data, std::size_t size) {
    while (size > 0) {
      ssize_t const n = ::send(fd, data, size, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data += n;
      size -= static_cast<std::size_t>(n);
    }
    return true;
  }

  void accept_one() {
    int const client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) return;
    int const upstream = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in const address = loopback(upstream_port_);
    if (upstream < 0 ||
        ::connect(upstream, reinterpret_cast<sockaddr const*>(&address), sizeof address) != 0) {
      if (upstream >= 0) ::close(upstream);
      ::close(client);
      return;
    }
    int const one = 1;
    ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::lock_guard<std::mutex> lock(mu_);
    pairs_.push_back({client, upstream});
  }

  // One thread: accepts, forwards both ways, and carries out resets.
  void run() {
    std::vector<char> buffer(64 * 1024);
    for (;;) {
      std::vector<pollfd> fds{{listener_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      std::vector<std::pair<std::size_t, bool>> owners;  // pair index, from the client side
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
        for (std::size_t i : resets_) {
          abort_socket(pairs_[i].client);
          abort_socket(pairs_[i].upstream);
        }
        if (!resets_.empty()) done_.notify_all();
        resets_.clear();
        for (std::size_t i = 0; i < pairs_.size(); ++i) {
          if (pairs_[i].client < 0) continue;
          fds.push_back({pairs_[i].client, POLLIN, 0});
          owners.emplace_back(i, true);
          fds.push_back({pairs_[i].upstream, POLLIN, 0});
          owners.emplace_back(i, false);
        }
      }
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        std::lock_guard<std::mutex> lock(mu_);
        dead_ = true;
        done_.notify_all();
        return;
      }
      if (fds[1].revents != 0) {
        char drain[64];
        (void)!::read(wake_[0], drain, sizeof drain);
      }
      if (fds[0].revents & POLLIN) accept_one();
      for (std::size_t k = 0; k < owners.size(); ++k) {
        if (fds[k + 2].revents == 0) continue;
        auto const [i, from_client] = owners[k];
        Pair pair;
        {
          std::lock_guard<std::mutex> lock(mu_);
          pair = pairs_[i];  // only this thread changes it: the copy stays true
        }
        if (pair.client < 0) continue;  // its other side ended it this round
        int const from = from_client ? pair.client : pair.upstream;
        int const to = from_client ? pair.upstream : pair.client;
        // Outside the lock: a blocked send must not block reset() or connections().
        ssize_t const n = ::recv(from, buffer.data(), buffer.size(), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || !write_all(to, buffer.data(), static_cast<std::size_t>(n))) {
          // One side closed or failed: close both (a clean close stays clean).
          std::lock_guard<std::mutex> lock(mu_);
          ::close(pairs_[i].client);
          ::close(pairs_[i].upstream);
          pairs_[i].client = pairs_[i].upstream = -1;
          done_.notify_all();
        }
      }
    }
  }

  void close_all() {
    for (Pair& pair : pairs_) {
      if (pair.client >= 0) ::close(pair.client);
      if (pair.upstream >= 0) ::close(pair.upstream);
    }
    pairs_.clear();
    if (listener_ >= 0) ::close(listener_);
    for (int& fd : wake_) {
      if (fd >= 0) ::close(fd);
      fd = -1;
    }
    listener_ = -1;
  }

  int upstream_port_;
  int listener_ = -1;
  int wake_[2] = {-1, -1};
  int port_ = 0;
  mutable std::mutex mu_;
  std::condition_variable done_;
  bool stopping_ = false;
  bool dead_ = false;                // the thread ended on an error
  std::vector<Pair> pairs_;          // guarded by mu_; written by the proxy's thread
  std::vector<std::size_t> resets_;  // guarded by mu_
  std::thread thread_;
};

}  // namespace stubkit_tests

#endif  // STUBKIT_TESTS_TCP_PROXY_HPP
