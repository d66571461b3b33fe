// hostd's configuration: every limit and timeout a named field with its
// default here, in one place.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/transport.hpp"

namespace vmgate::hostd {

inline constexpr std::uint32_t default_channel_port = 5500;

// The libvirt connection the inventory keeps.
struct LibvirtConfig {
  std::string uri = "qemu:///system";
  // Unless attach_vsock_on_demand, which needs read-write and makes it the default.
  bool read_only = true;
  // A request for a running domain without a vsock device attaches one to
  // the live domain (hostd/channel/channel_on_demand.hpp). libvirt answers
  // the attach within attach_timeout (else 503), and the guest's guestd
  // then has attached_guestd_timeout to answer on the new device (else 503):
  // longer than channel.connect_timeout, as the guest must take in the
  // device and guestd bind to it.
  bool attach_vsock_on_demand = false;
  std::chrono::milliseconds attach_timeout{10'000};
  std::chrono::milliseconds attached_guestd_timeout{15'000};
  // After libvirt refused an attach (or gave the device no CID), requests
  // for that domain get the same 503 at once for this long, then libvirt is
  // asked again: clients that retry in a loop do not each make an attach
  // call and a warning. 0: libvirt is asked every time.
  std::chrono::milliseconds attach_retry_after{10'000};
  std::chrono::milliseconds reconnect_min{500};
  std::chrono::milliseconds reconnect_max{30'000};
};

// How a listener learns who its clients are (docs/architecture.md, "Identity").
enum class ListenerIdentity {
  trusted,      // not at all: every client may reach every VM (loopback, tests)
  certificate,  // a TLS client certificate, verified against tls.client_ca
  token,        // proxy credentials (Proxy-Authorization), checked against auth.tokens_file
  source,       // the client's address, which ACL rules match as cidr:NETWORK
};

enum class ListenerMode {
  proxy,        // HTTP: hostd reads each request (over TLS when tls is set)
  passthrough,  // TLS kept end to end: routed on the ClientHello's SNI, relayed untouched
};

// TLS termination on a listener. Files are PEM; they are read at start and
// again on SIGHUP, so a renewed certificate needs no restart.
struct TlsConfig {
  std::string certificate;  // the chain, the listener's certificate first
  std::string key;
  // Set: every client must present a certificate that chains to one of these.
  std::string client_ca;
  // Set: the client certificate's SHA-256 fingerprint must also be one of
  // these (lowercase hex, no separators, as normalized at load).
  std::vector<std::string> pinned_sha256;
  std::chrono::milliseconds handshake_timeout{10'000};

  friend bool operator==(const TlsConfig&, const TlsConfig&) = default;
};

// "trusted", "certificate", "token" or "source", as the config spells it.
std::string_view identity_name(ListenerIdentity identity);

// Where the file says something ("hostd.toml:12: listener[1].address"), for
// an error found after the file loaded. Never part of what a setting is:
// any two compare equal, so moving a section in the file changes nothing.
struct ConfigSource {
  std::string text;
  friend bool operator==(const ConfigSource&, const ConfigSource&) { return true; }
};

struct ListenerConfig {
  std::string name;              // for logs; defaults to the address
  transport::Address address;    // tcp:HOST:PORT or unix:PATH
  std::uint16_t guest_port = 0;  // the agent port for header, proxy-form and DNS-name requests
  ListenerMode mode = ListenerMode::proxy;
  ListenerIdentity identity = ListenerIdentity::trusted;
  // identity trusted is only allowed on loopback (or a unix socket) unless
  // `trusted_remote` says so as well.
  bool trusted_remote = false;
  std::optional<TlsConfig> tls;
  // Its section's line, where a port in use on SIGHUP is reported.
  ConfigSource where;

  bool trusted() const { return identity == ListenerIdentity::trusted; }
  friend bool operator==(const ListenerConfig&, const ListenerConfig&) = default;
};

struct RoutingConfig {
  std::string vm_header = "X-VM-Id";
  std::string host_suffix;  // ".vms.example"; empty disables the DNS-name form
};

struct ChannelConfig {
  // Per-VM transport to reach guestd; placeholders {cid} {name} {uuid} {port}.
  std::string transport_template = "vsock:{cid}:{port}";
  std::uint32_t guestd_port = default_channel_port;
  // Connect + guestd's answer, retries included: a guestd that is not
  // answering yet (its VM booting, guestd restarting: the connect refused or
  // reset, or closed before an answer) is tried again within it, after a
  // wait drawn from [d/2, d], d doubling from connect_retry_min up to
  // connect_retry_max; then 502 "guestd not answering". An answer (guestd's
  // refusal included) is never retried.
  std::chrono::milliseconds connect_timeout{3000};
  std::chrono::milliseconds connect_retry_min{50};
  std::chrono::milliseconds connect_retry_max{500};
  // Idle keep-alive channels kept for later requests of any client, per
  // (VM, agent port); 0 turns the pool off. A client connection gives its
  // channel back here as soon as its exchange is done, so this, not the
  // number of connected clients, bounds the idle channels of a VM.
  std::uint32_t pool_max_idle = 64;
  // How long a channel may sit idle before it is closed instead of reused.
  // Shorter than agents' own keep-alive (WinRM's HTTP.sys: 120 s, Apache: 5 s
  // is the short end) so that an agent rarely closes a channel just as a
  // request with a body, which cannot be retried, is written to it.
  std::chrono::milliseconds pool_idle_timeout{4000};
  // Channels one VM may have open at once for HTTP requests, in use or idle:
  // keep it below guestd's max_connections (1024 by default), which CONNECT
  // tunnels share. A request that finds them all in use waits for one.
  std::uint32_t max_per_vm = 512;
  // Of those, how many may be private to one client connection at once,
  // because the agent's authentication (NTLM, Negotiate) is bound to it.
  std::uint32_t max_private_per_vm = 128;
  // How long a request waits for a channel when all of its VM's are in use,
  // and how many may wait at once; then 503.
  std::chrono::milliseconds wait_timeout{10'000};
  std::uint32_t max_waiting_per_vm = 4096;
};

struct LimitsConfig {
  std::uint32_t header_bytes = 32 * 1024;  // request or response head → 431
  // RFC 9112 §3: at least 8000 octets of request line should be read. A
  // request line longer than header_bytes is a 414 as well.
  std::uint32_t request_line_bytes = 8 * 1024;  // method, target and version → 414
  std::uint32_t header_fields = 100;            // fields in a request head → 431
  // A chunked body either way (RFC 9112 §7.1): the extensions of one chunk
  // and the trailer section, which hostd reads and drops (RFC 9112 §7.1.1,
  // RFC 9110 §6.5) → 400 for a request, a cut response for an agent's.
  std::uint32_t chunk_extension_bytes = 1024;
  std::uint32_t trailer_bytes = 8 * 1024;
  std::uint64_t max_request_body = 0;                // 0: unlimited (BITS uploads) → 413
  std::chrono::milliseconds header_timeout{60'000};  // idle keep-alive + head arrival
  std::chrono::milliseconds idle_timeout{300'000};   // no progress during an exchange → 504
  std::uint32_t max_connections = 4096;              // client connections per hostd
  // Of those, how many one client address may hold at once (tunnels
  // included), so one client cannot take every slot: more are answered 429
  // and closed. Loopback clients count too (a local proxy in front of hostd
  // wants this raised).
  std::uint32_t max_connections_per_client = 1024;
  // CONNECT tunnels open at once, hostd-wide: each holds a channel to a
  // guestd for as long as it is open; more are answered 503.
  std::uint32_t max_tunnels = 2048;
  // A passthrough listener reads this much of a TLS ClientHello, within this
  // time, to find its SNI name; then the connection is closed.
  std::uint32_t client_hello_bytes = 16 * 1024;
  std::chrono::milliseconds client_hello_timeout{10'000};
  // On SIGTERM, how long requests and tunnels in progress may go on before
  // what is left is closed. Idle keep-alive connections close at once.
  std::chrono::milliseconds stop_grace{10'000};
};

// Fan-out (hostd/fanout): one request delivered to every VM a group, network,
// range or list target names (docs/architecture.md, "Targets and groups",
// "Fan-out"), with each VM's answer streamed back as it comes.
struct FanoutConfig {
  // The request body is read whole, once, and held once for every VM: above
  // this it is refused 413 before any VM is tried.
  std::uint64_t max_body = 4 * 1024 * 1024;
  // VMs delivered to at once: each holds a channel (a descriptor in hostd, a
  // session in its guestd) while its request is in flight.
  std::uint32_t max_parallel = 256;
  // One VM's whole delivery (channel, request, response) may take this long;
  // then it is reported timed out and the others go on.
  std::chrono::milliseconds vm_timeout{30'000};
  // One VM's response body is held until its part is written: above this the
  // VM is reported too_large and its response dropped.
  std::uint64_t max_response = 1024 * 1024;
  // The most VMs one target may name: a range is refused (400) before it is
  // expanded when it would name more, and so is any target resolving to more.
  std::uint64_t max_targets = 10'000;
  // How deeply groups may name groups: group:a → group:b is depth 2.
  std::uint32_t max_group_depth = 8;
};

inline constexpr std::uint16_t default_admin_port = 9090;

// The admin listener: health, readiness, metrics and the JSON API vmgatectl
// uses. It lists every VM and can open channels, so it stays on loopback
// unless `allow_remote` says otherwise.
struct AdminConfig {
  bool enabled = true;
  transport::Address address{
      .kind = transport::Kind::tcp, .port = default_admin_port, .host = "127.0.0.1"};
  bool allow_remote = false;
};

// Where proxy credentials are checked: a file of token names and the
// SHA-256 of each token (hostd/identity/token_store.hpp), which must be mode
// 0600 and owned by hostd's user.
struct AuthConfig {
  std::string tokens_file;
};

// One ACL rule (hostd/authz): which identities may (or, `deny`, may not)
// reach which VMs on which ports. Deny rules win; no matching rule denies.
struct AclRule {
  std::string name;  // for records and /v1/check; "acl[N]" unless named
  bool deny = false;
  // "cert:GLOB", "token:GLOB", "cidr:NETWORK", "vm:GLOB" (a calling VM)
  std::vector<std::string> identities;
  std::vector<std::string> vms;      // name globs ("web*"), UUIDs, "*"
  std::vector<std::uint16_t> ports;  // empty: every port
};

inline constexpr std::uint32_t default_inbound_port = 5501;

// One entry of [host_services]: `monitor = "tcp:127.0.0.1:9000"` for every
// VM hostd can tell apart, or a table with `address` and `vms` for some.
struct HostService {
  transport::Address address;
  // The calling VMs it is for, as an ACL rule's `vms` (name globs, UUIDs);
  // ["*"] when the entry is an address alone.
  std::vector<std::string> vms{"*"};
};

// The host end of channels that guests start (hostd/guestside,
// docs/architecture.md "Guest-originated traffic"). Who the caller is comes
// only from where its connection arrived: the kernel's peer CID on the vsock
// listener, or the per-VM socket it connected to. Off unless one is set.
struct InboundConfig {
  // vsock:ANY:PORT (guestd's [outbound] hostd = "vsock:2:PORT").
  std::optional<transport::Address> listen;
  // One unix socket per VM, "unix:/run/vmgate/in/{name}.sock" ({name},
  // {uuid}): the stand-in for a VM's vsock, created and removed as VMs
  // appear and disappear. The socket a connection arrived on is its VM.
  std::string per_vm_template;
  // Hybrid vsock (Firecracker, Cloud Hypervisor): a guest's connection to
  // the host's port P arrives on UDS_PATH_P, where UDS_PATH is the VM's
  // fcvsock: socket. Set, hostd listens on UDS_PATH_PORT for each VM whose
  // channel transport is fcvsock:UDS_PATH:...; 0: off.
  std::uint32_t hybrid_port = 0;
  // Peer CIDs that stand for a VM by name, for hosts where the kernel's peer
  // CID is not the VM's own (the vsock-loopback lab: every peer is CID 1).
  // Looked at before the directory's CID index.
  std::map<std::uint32_t, std::string> peer_cids;
  // The guest's preamble (SEND, JOIN, LEAVE) must arrive within this time.
  std::chrono::milliseconds preamble_timeout{5'000};
  // Connecting to a host service, or a channel to a destination VM.
  std::chrono::milliseconds connect_timeout{3'000};
  // The guest's request head must arrive within this time after the answer.
  std::chrono::milliseconds header_timeout{30'000};
  // After an answer or a response, how long hostd reads (and drops) what the
  // guest still sends before it closes, so the close does not reset the
  // answer away.
  std::chrono::milliseconds linger{2'000};
  // Guest connections open at once, every VM together; more are answered
  // 503 busy and closed.
  std::uint32_t max_connections = 1024;

  bool enabled() const { return listen || !per_vm_template.empty() || hybrid_port != 0; }
};

// Cluster mode (docs/architecture.md, "Cluster"): the directory in etcd and
// the peer listener other hostds forward to. Off by default: one host, the
// embedded directory, no etcd anywhere.
struct ClusterConfig {
  bool enabled = false;
  std::string host_name;  // this host in etcd and in peers' certificates; default: gethostname()
  // etcd's client URLs (its JSON gateway), tried in turn: a cluster's members.
  std::vector<transport::Address> etcd_endpoints{
      {.kind = transport::Kind::tcp, .port = 2379, .host = "127.0.0.1"}};
  // This host's records live as long as its lease: a host that dies drops
  // out of every directory after this, and requests for its VMs meanwhile
  // get a prompt 502 naming it.
  std::chrono::seconds lease_ttl{10};
  std::chrono::milliseconds etcd_timeout{2000};  // one etcd call
  // Everything is read again this often, whatever the watch said.
  std::chrono::milliseconds reconcile_interval{60'000};
  // etcd unreachable: tried again with jittered exponential backoff
  // (inventory/reconnect_backoff.hpp) between these.
  std::chrono::milliseconds reconnect_min{200};
  std::chrono::milliseconds reconnect_max{10'000};
  // The peer listener: HTTP/1.1 over mutual TLS, for requests other hostds
  // forward to this host's VMs.
  transport::Address peer_listen{.kind = transport::Kind::tcp, .port = 7443, .host = "0.0.0.0"};
  std::string peer_address;      // what other hosts connect to; default: peer_listen
  std::string peer_certificate;  // names host_name (DNS SAN or CN)
  std::string peer_key;
  std::string peer_ca;  // the cluster CA: every host's certificate chains to it
  // The IPv4/IPv6 addresses clients reach this host's listeners on, published
  // in its host record: what every host's DNS ([dns]) answers for this host's
  // VMs. Default (unset or empty): [dns] addresses.
  std::vector<std::string> client_addresses;
  // Connect, TLS handshake and the peer's answer, for a forwarded request.
  std::chrono::milliseconds peer_connect_timeout{2000};
  // A forwarded request's head (the peer listener's limit).
  std::uint32_t peer_header_bytes = 8 * 1024;

  friend bool operator==(const ClusterConfig&, const ClusterConfig&) = default;
};

// [groups]: static groups (web = ["vm1", "web[01-04]", "group:db", "net:lab"])
// and [groups.joinable]: which groups a guest may join, and which VMs may
// (web = ["web*"]: name globs or UUIDs, as ACL rules write VMs; "*" any).
struct GroupDefinition {
  std::string name;
  std::vector<std::string> members;  // target items as written; no `!ITEM`
  ConfigSource where;
  friend bool operator==(const GroupDefinition&, const GroupDefinition&) = default;
};
struct JoinableGroup {
  std::string name;
  std::vector<std::string> vms;  // who may join: globs or UUIDs
  friend bool operator==(const JoinableGroup&, const JoinableGroup&) = default;
};
struct GroupsConfig {
  std::vector<GroupDefinition> groups;
  std::vector<JoinableGroup> joinable;
  friend bool operator==(const GroupsConfig&, const GroupsConfig&) = default;
};

// The embedded directory's own state: guest group joins, kept across restarts.
struct DirectoryConfig {
  std::string state_file = "/var/lib/vmgate/directory-state.json";
};

// hostd answering DNS (hostd/dns) for names under routing.host_suffix: a
// VM's name → the address of the host that runs it, so that clients go
// straight to the right host.
struct DnsListen {
  std::string host;  // numeric: "127.0.0.1", "::1"
  std::uint16_t port = 53;
  friend bool operator==(const DnsListen&, const DnsListen&) = default;
};

struct DnsConfig {
  std::vector<DnsListen> listen;  // each served over UDP and TCP; empty: no DNS
  // What a name of this host's VMs answers: the addresses clients reach this
  // hostd's listeners on (A and AAAA records).
  std::vector<std::string> addresses;
  std::uint32_t ttl_seconds = 5;  // short: a VM that moves is followed soon
  std::uint32_t max_tcp_connections = 128;
  std::chrono::milliseconds tcp_idle_timeout{10'000};

  bool enabled() const { return !listen.empty(); }
  friend bool operator==(const DnsConfig&, const DnsConfig&) = default;
};

struct HostdConfig {
  LibvirtConfig libvirt;
  std::vector<ListenerConfig> listeners;
  RoutingConfig routing;
  ChannelConfig channel;
  LimitsConfig limits;
  FanoutConfig fanout;
  AdminConfig admin;
  AuthConfig auth;
  std::vector<AclRule> acl;
  ClusterConfig cluster;
  InboundConfig inbound;
  // The services on the host side a guest may name as host:NAME. A name
  // not here is refused: this is an allowlist.
  std::map<std::string, HostService> host_services;
  GroupsConfig groups;
  DirectoryConfig directory;
  DnsConfig dns;
  unsigned threads = 0;  // 0: one per core
};

// Throws config::ConfigError naming file, line and key.
HostdConfig load_hostd_config(const std::string& path);
HostdConfig parse_hostd_config(std::string_view text, const std::string& name);

}  // namespace vmgate::hostd
