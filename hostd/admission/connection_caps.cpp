#include "hostd/admission/connection_caps.hpp"

#include <functional>

namespace vmgate::hostd {

namespace ip = boost::asio::ip;

namespace {

ip::address canonical(const ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped())
    return ip::make_address_v4(ip::v4_mapped, address.to_v6());
  return address;
}

}  // namespace

struct ConnectionCaps::Counts {
  // One lock for every address: taken once per accepted connection and once
  // at its end, never while anything waits.
  mutable std::mutex mutex;
  std::unordered_map<ip::address, std::uint32_t> per_client;  // only addresses with a connection
  std::atomic<std::uint32_t> tunnels{0};
};

// Built in place (make_shared), never copied: the action runs once, when
// the last holder of the place lets it go.
struct CapPlace::GiveBack {
  explicit GiveBack(std::function<void()> a) : action(std::move(a)) {}
  GiveBack(const GiveBack&) = delete;
  GiveBack& operator=(const GiveBack&) = delete;
  ~GiveBack() { action(); }
  std::function<void()> action;
};

CapPlace::CapPlace(std::shared_ptr<GiveBack> give_back) : give_back_(std::move(give_back)) {}
CapPlace::CapPlace(CapPlace&& other) noexcept = default;
CapPlace& CapPlace::operator=(CapPlace&& other) noexcept = default;
CapPlace::~CapPlace() = default;

ConnectionCaps::ConnectionCaps() : counts_(std::make_shared<Counts>()) {}
ConnectionCaps::~ConnectionCaps() = default;

CapPlace ConnectionCaps::take_client(const ip::address& address, std::uint32_t limit) {
  const ip::address key = canonical(address);
  {
    std::lock_guard lock(counts_->mutex);
    std::uint32_t& open = counts_->per_client[key];
    if (open >= limit) {
      if (open == 0) counts_->per_client.erase(key);
      return {};
    }
    ++open;
  }
  return CapPlace(std::make_shared<CapPlace::GiveBack>([counts = counts_, key] {
    std::lock_guard lock(counts->mutex);
    auto it = counts->per_client.find(key);
    if (it != counts->per_client.end() && --it->second == 0) counts->per_client.erase(it);
  }));
}

CapPlace ConnectionCaps::take_tunnel(std::uint32_t limit) {
  std::uint32_t open = counts_->tunnels.load();
  do {
    if (open >= limit) return {};
  } while (!counts_->tunnels.compare_exchange_weak(open, open + 1));
  return CapPlace(std::make_shared<CapPlace::GiveBack>([counts = counts_] { --counts->tunnels; }));
}

std::uint32_t ConnectionCaps::connections_from(const ip::address& address) const {
  std::lock_guard lock(counts_->mutex);
  auto it = counts_->per_client.find(canonical(address));
  return it == counts_->per_client.end() ? 0 : it->second;
}

std::uint32_t ConnectionCaps::open_tunnels() const {
  return counts_->tunnels.load();
}

}  // namespace vmgate::hostd
