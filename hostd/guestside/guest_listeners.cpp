#include "hostd/guestside/guest_listeners.hpp"

#include <unistd.h>

#include <filesystem>
#include <functional>
#include <map>

#include <fmt/format.h>

#include "common/log.hpp"
#include "common/transport.hpp"
#include "hostd/guestside/guest_caller.hpp"

namespace vmgate::hostd {
namespace {

// After a failed accept (EMFILE, ENOBUFS, ...), pause before the next one.
constexpr std::chrono::milliseconds accept_retry_delay{200};
// Who may connect to a per-VM socket: hostd's user and group (the VMM's,
// for hybrid vsock). connect(2) on a unix socket needs write permission.
constexpr std::uint32_t per_vm_socket_mode = 0660;

}  // namespace

struct GuestListeners::State : std::enable_shared_from_this<State> {
  State(asio::any_io_executor ex, Directory& d, GuestServices s, const InboundConfig& in)
      : executor(ex), directory(d), services(std::move(s)), inbound(in) {}

  // A per-VM socket: the VM it was made for, by UUID.
  struct PerVm {
    std::shared_ptr<Acceptor> acceptor;
    std::string uuid;
    std::string name;
  };

  asio::any_io_executor executor;
  Directory& directory;
  GuestServices services;
  InboundConfig inbound;
  std::shared_ptr<Acceptor> vsock;
  std::map<std::string, PerVm> per_vm;  // by socket path
  std::optional<Directory::ObserverId> observer;
  std::uint32_t open = 0;
  std::uint64_t next_id = 0;
  bool stopping = false;

  using Identify = std::function<GuestArrival(Stream&)>;
  awaitable<void> accept_loop(std::shared_ptr<Acceptor> acceptor, Identify identify);
  void serve(Stream stream, GuestArrival arrival);
  void sync_per_vm();
  void remove_socket(const std::string& path);
};

awaitable<void> GuestListeners::State::accept_loop(std::shared_ptr<Acceptor> acceptor,
                                                   Identify identify) {
  asio::steady_timer retry(executor);
  while (!stopping && acceptor->is_open()) {
    auto [ec, socket] = co_await acceptor->async_accept(use_tuple);
    if (stopping || !acceptor->is_open()) break;
    if (ec) {
      log::warn("guest_accept_failed").kv("error", ec.message());
      retry.expires_after(accept_retry_delay);
      co_await retry.async_wait(use_tuple);
      continue;
    }
    GuestArrival arrival = identify(socket);
    serve(std::move(socket), std::move(arrival));
  }
}

void GuestListeners::State::serve(Stream stream, GuestArrival arrival) {
  arrival.busy = open >= services.current.get()->config.inbound.max_connections;
  ++open;
  const std::uint64_t id = ++next_id;
  asio::co_spawn(executor, serve_guest(std::move(stream), std::move(arrival), services, id),
                 [self = shared_from_this(), id](std::exception_ptr e) {
                   --self->open;
                   if (e) {
                     log::error("guest_session_failed")
                         .kv("conn", static_cast<unsigned long long>(id))
                         .kv("error", log::describe(e));
                   }
                 });
}

void GuestListeners::State::remove_socket(const std::string& path) {
  auto it = per_vm.find(path);
  if (it == per_vm.end()) return;
  error_code ignored;
  it->second.acceptor->close(ignored);
  ::unlink(path.c_str());
  log::info("guest_socket_removed").kv("path", path).kv("vm", it->second.name);
  per_vm.erase(it);
}

// The per-VM sockets the directory's VMs should have, made or removed to
// match. Runs on the executor, after each directory change.
void GuestListeners::State::sync_per_vm() {
  if (stopping) return;
  std::map<std::string, const VmRecord*> wanted;
  const auto vms = directory.snapshot();
  for (const VmRecord& vm : vms) {
    if (auto path = per_vm_socket_path(inbound, vm)) wanted.emplace(*path, &vm);
    if (auto path = hybrid_socket_path(inbound, services.channel, vm)) wanted.emplace(*path, &vm);
  }
  for (auto it = per_vm.begin(); it != per_vm.end();) {
    auto next = std::next(it);
    auto w = wanted.find(it->first);
    if (w == wanted.end() || w->second->uuid != it->second.uuid) remove_socket(it->first);
    it = next;
  }
  for (const auto& [path, vm] : wanted) {
    if (per_vm.contains(path)) continue;
    std::error_code dir_ec;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), dir_ec);
    error_code ec;
    transport::Address address{.kind = transport::Kind::unix_socket, .path = path};
    auto acceptor =
        std::make_shared<Acceptor>(transport::listen(executor, address, ec, per_vm_socket_mode));
    if (ec) {
      log::error("guest_socket_failed")
          .kv("path", path)
          .kv("vm", vm->name)
          .kv("error", ec.message());
      continue;
    }
    log::info("guest_socket").kv("path", path).kv("vm", vm->name).kv("uuid", vm->uuid);
    per_vm[path] = PerVm{acceptor, vm->uuid, vm->name};
    Identify identify = [weak = weak_from_this(), uuid = vm->uuid, path](Stream&) {
      return GuestArrival{[weak, uuid]() -> Caller {
                            auto state = weak.lock();
                            if (!state) return unknown_caller("hostd is stopping");
                            return caller_by_uuid(uuid, state->directory);
                          },
                          "unix:" + path};
    };
    // The handler keeps the state alive while the loop may still resume.
    asio::co_spawn(
        executor, accept_loop(acceptor, std::move(identify)),
        [self = shared_from_this(), path](std::exception_ptr e) {
          if (e)
            log::error("guest_accept_loop_failed").kv("path", path).kv("error", log::describe(e));
        });
  }
}

GuestListeners::GuestListeners(asio::any_io_executor executor, Directory& directory,
                               GuestServices services, const InboundConfig& inbound)
    : state_(
          std::make_shared<State>(std::move(executor), directory, std::move(services), inbound)) {}

GuestListeners::~GuestListeners() {
  stop();
}

error_code GuestListeners::start() {
  auto& s = *state_;
  if (s.inbound.listen) {
    error_code ec;
    s.vsock = std::make_shared<Acceptor>(transport::listen(s.executor, *s.inbound.listen, ec));
    if (ec) return ec;
    log::info("guest_listening").kv("listen", s.inbound.listen->to_string());
    State::Identify identify = [weak = std::weak_ptr<State>(state_)](Stream& socket) {
      auto cid = transport::peer_vsock_cid(socket);
      if (!cid)
        return GuestArrival{[] { return unknown_caller("the peer is not AF_VSOCK"); }, "vsock"};
      return GuestArrival{[weak, cid = *cid]() -> Caller {
                            auto state = weak.lock();
                            if (!state) return unknown_caller("hostd is stopping");
                            // The CID aliases follow reloads; the listener does not.
                            return caller_by_cid(cid, state->services.current.get()->config.inbound,
                                                 state->directory);
                          },
                          fmt::format("vsock cid {}", *cid)};
    };
    asio::co_spawn(s.executor, s.accept_loop(s.vsock, std::move(identify)),
                   [self = state_](std::exception_ptr e) {
                     if (e) log::error("guest_accept_loop_failed").kv("error", log::describe(e));
                   });
  }
  if (!s.inbound.per_vm_template.empty() || s.inbound.hybrid_port != 0) {
    std::weak_ptr<State> weak = state_;
    auto executor = s.executor;
    // Called on the thread that changed the directory (libvirt's).
    s.observer = s.directory.observe([weak, executor](const DirectoryChange&) {
      asio::post(executor, [weak] {
        if (auto self = weak.lock()) self->sync_per_vm();
      });
    });
    asio::post(s.executor, [weak] {
      if (auto self = weak.lock()) self->sync_per_vm();
    });
  }
  return {};
}

void GuestListeners::stop() {
  auto& s = *state_;
  if (s.stopping) return;
  s.stopping = true;
  if (s.observer) s.directory.unobserve(*s.observer);
  s.observer.reset();
  error_code ignored;
  if (s.vsock) s.vsock->close(ignored);
  while (!s.per_vm.empty()) {
    auto path = s.per_vm.begin()->first;
    s.remove_socket(path);
  }
}

std::uint32_t GuestListeners::open_connections() const {
  return state_->open;
}

}  // namespace vmgate::hostd
