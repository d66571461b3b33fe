// The readers of hostd.toml's larger sections, one file per part of hostd
// they configure; hostd_config.cpp reads the file, the small sections and
// the checks that span sections. Each reader fails at the file, line and
// key of what it refuses (config::Section::fail). Internal to config/.
#pragma once

#include <cstddef>
#include <map>
#include <string>

#include "common/config_reader.hpp"
#include "hostd/config/hostd_config.hpp"

namespace vmgate::hostd::config_sections {

// listener_sections.cpp: who may come in, and as whom.
ListenerConfig read_listener(const config::Section& s, const AuthConfig& auth,
                             const RoutingConfig& routing);
// One [[acl]] table; `index` names a rule that has no name.
AclRule read_acl_rule(const config::Section& s, std::size_t index);
AdminConfig read_admin(const config::Section& s);

// guest_sections.cpp: the channels to guests, and what guests may reach.
ChannelConfig read_channel(const config::Section& s);
InboundConfig read_inbound(const config::Section& s);
std::map<std::string, HostService> read_host_services(const config::Section& s);

// cluster_sections.cpp: the other hosts, and the DNS that names VMs.
ClusterConfig read_cluster(const config::Section& s);
DnsConfig read_dns(const config::Section& s, const RoutingConfig& routing);

}  // namespace vmgate::hostd::config_sections
