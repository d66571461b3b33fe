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
#include <utility>

#include <boost/asio/ip/address.hpp>

namespace vmgate::hostd {

// A place under one of the caps, given back when it is destroyed. Empty (no
// place held) when the cap was reached, or when nothing was counted.
//
// A reference to the count it holds a place in, not a callback: a place
// lives as long as its connection or tunnel, and tens of thousands of idle
// ones are each a heap block fewer so (a std::function and its shared state
// were two per place, 80 bytes of heap: heaptrack, 2,000 idle tunnels).
class CapPlace {
 public:
  CapPlace() = default;
  CapPlace(CapPlace&& other) noexcept;
  CapPlace& operator=(CapPlace&& other) noexcept;
  CapPlace(const CapPlace&) = delete;
  CapPlace& operator=(const CapPlace&) = delete;
  ~CapPlace();

  explicit operator bool() const { return static_cast<bool>(counts_); }

 private:
  friend class ConnectionCaps;
  struct Counts;
  // A client address's count: the entry of the address's map, which stays
  // where it is until its count reaches zero (unordered_map keeps pointers
  // to its elements valid across rehashing); null for a tunnel's place.
  using ClientEntry = std::pair<const boost::asio::ip::address, std::uint32_t>;
  CapPlace(std::shared_ptr<Counts> counts, ClientEntry* client)
      : counts_(std::move(counts)), client_(client) {}
  void give_back();

  std::shared_ptr<Counts> counts_;
  ClientEntry* client_ = nullptr;
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
  std::shared_ptr<CapPlace::Counts> counts_;
};

}  // namespace vmgate::hostd
