//! Multi-host tests on one machine: each node gets its own Linux network namespace with a real
//! address on a private /24, so nodes share no loopback and a link can be cut.
//!
//! ```text
//!   root namespace (the test)         bridge namespace            node namespaces
//!   <host_if> 10.a.b.254 ──veth── br0 ──veth── eth0 10.a.b.1 (node 0)
//!                                     ──veth── eth0 10.a.b.2 (node 1) ...
//! ```
//!
//! The bridge lives in a namespace of its own so the host's firewall and routes never see node
//! traffic; the test process reaches the nodes through one veth of its own on the bridge.
//! [`Netns::partition`] takes a node's bridge port down: the node is cut off from its peers and
//! from the test client alike, as if its cable were pulled. [`Netns::isolate_from_peers`] cuts it
//! off from its peers only, so the test can watch how it answers clients meanwhile. Every name carries this process's pid
//! and a per-process counter, so parallel tests never collide, and namespaces left behind by a
//! killed test run (their pid is gone) are removed by the next [`Netns::new`].
//!
//! Needs root and `ip` (iproute2). Tests call [`available`] first and, when it fails, print
//! `SKIPPED: <why>` to stderr and return (see [`skip_unless_available`]).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Node;

/// Every namespace and host interface this module creates starts with this.
const PREFIX: &str = "vdt";
/// The ports each node listens on inside its own namespace (no other process can hold them).
pub const API_PORT: u16 = 8200;
pub const CLUSTER_PORT: u16 = 8201;
/// Bounds the subnet search: the /24s tried before giving up.
const SUBNET_TRIES: u32 = 64;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether namespaces can be made here: we run as root and `ip netns` works. The error says why
/// not, for the SKIPPED line.
pub fn available() -> Result<(), String> {
    let uid = Command::new("id").arg("-u").output().map_err(|e| format!("id -u: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("network namespaces need root".into());
    }
    ip(&["netns", "list"]).map_err(|e| format!("`ip netns` does not work ({e}); install iproute2"))?;
    // Creating one proves the kernel allows it (a container may forbid unshare).
    let probe = format!("{PREFIX}{}p{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    ip(&["netns", "add", &probe]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let _ = ip(&["netns", "del", &probe]);
    Ok(())
}

/// For tests: `true` when namespaces work; otherwise prints `SKIPPED: <test>: <why>` to stderr
/// so a skip is never mistaken for a pass.
pub fn skip_unless_available(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(why) => {
            // Straight to the process's stderr: the test harness captures `eprintln!` of
            // passing tests, which would hide the skip.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
            false
        }
    }
}

/// Deletes namespaces of ours whose creating process no longer exists (a test killed before its
/// Drop ran). Deleting a namespace also deletes the veth ends inside it and so their peers.
fn remove_leftovers() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !pid.is_empty() && !Path::new("/proc").join(&pid).exists() {
            kill_all_in(name);
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn kill_all_in(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

/// N namespaces on a bridge; everything is removed (and every process in them killed) on drop.
pub struct Netns {
    tag: String,
    bridge_ns: String,
    nodes: Vec<String>,
    net: (u8, u8),
}

impl Netns {
    /// Creates `n` node namespaces (`n` <= 200), each with `eth0` at 10.a.b.(i+1)/24 and loopback
    /// up, plus the bridge namespace and the host's own interface at 10.a.b.254.
    pub fn new(n: usize) -> Result<Netns, String> {
        assert!((1..=200).contains(&n), "1..=200 nodes");
        remove_leftovers();
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        // Interface names are limited to 15 bytes: "vdt" + pid (<= 7) + seq + 1-3 more.
        let tag = format!("{PREFIX}{pid}{}", (b'a' + (seq % 26) as u8) as char);
        let net = free_subnet(pid, seq)?;
        let mut me = Netns { tag: tag.clone(), bridge_ns: format!("{tag}br"), nodes: vec![], net };
        // On any error from here, Drop removes what was made.
        ip(&["netns", "add", &me.bridge_ns])?;
        me.in_ns(&me.bridge_ns, &["link", "set", "lo", "up"])?;
        me.in_ns(&me.bridge_ns, &["link", "add", "br0", "type", "bridge"])?;
        me.in_ns(&me.bridge_ns, &["link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("{tag}n{i}");
            ip(&["netns", "add", &ns])?;
            me.nodes.push(ns.clone());
            me.in_ns(&ns, &["link", "set", "lo", "up"])?;
            let port = me.port_if(i);
            ip(&["link", "add", &port, "netns", &me.bridge_ns, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            me.in_ns(&me.bridge_ns, &["link", "set", &port, "master", "br0", "up"])?;
            me.in_ns(&ns, &["addr", "add", &format!("{}/24", me.ip(i)), "dev", "eth0"])?;
            me.in_ns(&ns, &["link", "set", "eth0", "up"])?;
        }
        let host_if = me.host_if();
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "hostport", "netns", &me.bridge_ns])?;
        me.in_ns(&me.bridge_ns, &["link", "set", "hostport", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("10.{}.{}.254/24", net.0, net.1), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        Ok(me)
    }

    fn in_ns(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["-n", ns];
        full.extend_from_slice(args);
        ip(&full)
    }

    fn port_if(&self, i: usize) -> String {
        format!("{}p{i}", self.tag)
    }

    fn host_if(&self) -> String {
        format!("{}h", self.tag)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The namespace of node `i` (0-based).
    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.{}.{}.{}", self.net.0, self.net.1, i + 1)
    }

    /// `ip netns exec NS`: run a command inside node `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.nodes[i].clone()]
    }

    /// Starts a raft vaultd in namespace `i`, listening on [`Netns::ip`]`(i)`:8200 (cluster port
    /// 8201), with `raft_lines` added to its `storage "raft"` stanza as in [`Node::raft_with`].
    pub fn node(&self, i: usize, dir: &Path, node_id: &str, raft_lines: &str) -> Node {
        Node::raft_at(dir, node_id, raft_lines, &self.ip(i), (API_PORT, CLUSTER_PORT), self.exec_prefix(i))
    }

    /// Cuts node `i` off the network (its bridge port goes down): no packet in or out.
    pub fn partition(&self, i: usize) -> Result<(), String> {
        self.in_ns(&self.bridge_ns, &["link", "set", &self.port_if(i), "down"]).map(|_| ())
    }

    /// Undoes [`Netns::partition`].
    pub fn heal(&self, i: usize) -> Result<(), String> {
        self.in_ns(&self.bridge_ns, &["link", "set", &self.port_if(i), "up"]).map(|_| ())
    }

    /// Cuts node `i` off from the other nodes only, both ways, while the test (in the root
    /// namespace) still reaches every node: blackhole routes for the peers' addresses inside
    /// node `i`'s namespace and for node `i`'s address inside each peer's. A client of the cut
    /// off node sees what it would in a real split: a node that answers but has no quorum.
    pub fn isolate_from_peers(&self, i: usize) -> Result<(), String> {
        self.peer_routes(i, "add")
    }

    /// Undoes [`Netns::isolate_from_peers`].
    pub fn rejoin_peers(&self, i: usize) -> Result<(), String> {
        self.peer_routes(i, "del")
    }

    fn peer_routes(&self, i: usize, op: &str) -> Result<(), String> {
        for j in (0..self.nodes.len()).filter(|&j| j != i) {
            self.in_ns(&self.nodes[i], &["route", op, "blackhole", &format!("{}/32", self.ip(j))])?;
            self.in_ns(&self.nodes[j], &["route", op, "blackhole", &format!("{}/32", self.ip(i))])?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.nodes {
            kill_all_in(ns);
            let _ = ip(&["netns", "del", ns]);
        }
        kill_all_in(&self.bridge_ns);
        let _ = ip(&["netns", "del", &self.bridge_ns]);
        // Normally gone with its peer in the bridge namespace; this covers a half-made setup.
        let _ = ip(&["link", "del", &self.host_if()]);
    }
}

/// A 10.a.b.0/24 no interface of the host uses, picked from this pid and sequence number so
/// parallel test processes start their search in different places.
fn free_subnet(pid: u32, seq: u32) -> Result<(u8, u8), String> {
    let used = ip(&["-4", "-o", "addr", "show"])?;
    let base = pid.wrapping_mul(2_654_435_761).wrapping_add(seq.wrapping_mul(40_503));
    for k in 0..SUBNET_TRIES {
        let h = base.wrapping_add(k.wrapping_mul(97));
        // 10.200.0.0 - 10.249.255.0: away from the low 10.x ranges clouds and Docker use.
        let net = (200 + (h % 50) as u8, ((h >> 8) % 256) as u8);
        if !used.contains(&format!(" 10.{}.{}.", net.0, net.1)) {
            return Ok(net);
        }
    }
    Err("no free 10.x.y.0/24 for the test network".into())
}
