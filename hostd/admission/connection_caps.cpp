#include "hostd/admission/connection_caps.hpp"

namespace vmgate::hostd {

namespace ip = boost::asio::ip;

namespace {

ip::address canonical(const ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped())
    return ip::make_address_v4(ip::v4_mapped, address.to_v6());
  return address;
}

}  // namespace

struct CapPlace::Counts {
  // One lock for every address: taken once per accepted connection and once
  // at its end, never while anything waits.
  mutable std::mutex mutex;
  std::unordered_map<ip::address, std::uint32_t> per_client;  // only addresses with a connection
  std::atomic<std::uint32_t> tunnels{0};
};

CapPlace::CapPlace(CapPlace&& other) noexcept
    : counts_(std::move(other.counts_)), client_(std::exchange(other.client_, nullptr)) {}

CapPlace& CapPlace::operator=(CapPlace&& other) noexcept {
  if (this != &other) {
    give_back();
    counts_ = std::move(other.counts_);
    client_ = std::exchange(other.client_, nullptr);
  }
  return *this;
}

CapPlace::~CapPlace() {
  give_back();
}

void CapPlace::give_back() {
  if (!counts_) return;
  if (client_ == nullptr) {
    --counts_->tunnels;
  } else {
    std::lock_guard lock(counts_->mutex);
    if (--client_->second == 0) {
      const ip::address key = client_->first;  // erase() destroys the entry
      counts_->per_client.erase(key);
    }
  }
  counts_.reset();
  client_ = nullptr;
}

ConnectionCaps::ConnectionCaps() : counts_(std::make_shared<CapPlace::Counts>()) {}
ConnectionCaps::~ConnectionCaps() = default;

CapPlace ConnectionCaps::take_client(const ip::address& address, std::uint32_t limit) {
  std::lock_guard lock(counts_->mutex);
  auto [entry, added] = counts_->per_client.try_emplace(canonical(address), 0);
  if (entry->second >= limit) {
    if (added) counts_->per_client.erase(entry);
    return {};
  }
  ++entry->second;
  return CapPlace(counts_, &*entry);
}

CapPlace ConnectionCaps::take_tunnel(std::uint32_t limit) {
  std::uint32_t open = counts_->tunnels.load();
  do {
    if (open >= limit) return {};
  } while (!counts_->tunnels.compare_exchange_weak(open, open + 1));
  return CapPlace(counts_, nullptr);
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
