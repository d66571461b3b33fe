// The caps on what clients hold open at once, beside max_connections (which
// the listener counts at accept): connections per client address
// (limits.max_connections_per_client) and CONNECT tunnels hostd-wide
// (limits.max_tunnels). Every I/O thread takes places here, so the counts are
// shared and each take is one atomic step: two threads cannot both take the
// last place.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include <boost/asio/ip/address.hpp>

namespace vmgate::hostd {

// A place under one of the caps, given back when it is destroyed. Empty (no
// place held) when the cap was reached, or when nothing was counted.
class CapPlace {
 public:
  CapPlace() = default;
  CapPlace(CapPlace&& other) noexcept;
  CapPlace& operator=(CapPlace&& other) noexcept;
  CapPlace(const CapPlace&) = delete;
  CapPlace& operator=(const CapPlace&) = delete;
  ~CapPlace();

  explicit operator bool() const { return static_cast<bool>(give_back_); }

 private:
  friend class ConnectionCaps;
  struct GiveBack;
  explicit CapPlace(std::shared_ptr<GiveBack> give_back);
  std::shared_ptr<GiveBack> give_back_;
};

class ConnectionCaps {
 public:
  ConnectionCaps();
  ~ConnectionCaps();
  ConnectionCaps(const ConnectionCaps&) = delete;
  ConnectionCaps& operator=(const ConnectionCaps&) = delete;

  // A place for one more connection from `address`; empty when `address`
  // has `limit` open already. IPv4-mapped IPv6 addresses count as IPv4.
  CapPlace take_client(const boost::asio::ip::address& address, std::uint32_t limit);
  // A place for one more CONNECT tunnel; empty when `limit` are open.
  CapPlace take_tunnel(std::uint32_t limit);

  std::uint32_t connections_from(const boost::asio::ip::address& address) const;
  std::uint32_t open_tunnels() const;

 private:
  // Shared with the places taken: a connection may end, and give its place
  // back, while the server that counted it is being torn down.
  struct Counts;
  std::shared_ptr<Counts> counts_;
};

}  // namespace vmgate::hostd
