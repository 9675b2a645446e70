//! The agent's web fetch, done by the host (SPEC §6): the default container
//! has no network, so this is its only way out, and it must not become a way
//! into the host or its network. Only http and https, and only to public
//! addresses: [`classify`] sorts an address into its special-purpose range,
//! and [`refusal`] also refuses every address on one of this host's own
//! interfaces (its public IP included), listed afresh at most
//! [`HOST_ADDRESSES_TTL`] ago.
//!
//! One [`WebFetcher`] serves every fetch with one HTTP client, so a flood of
//! fetches shares a small, bounded pool of connections. The client resolves
//! names with its own resolver, which refuses a name if any of its addresses
//! is refused and hands the connector only checked ones: nothing else is
//! ever connected to, and a second DNS answer cannot swap in an internal
//! address. IP-literal URLs skip the resolver, so they are checked before
//! sending. There is no proxy (a proxy would resolve names itself).
//! Redirects are followed by hand (at most [`MAX_REDIRECTS`]) so each target
//! is checked the same way. A time limit covers the whole fetch, and the
//! body is cut at a size cap.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Url;

use crate::config::WebConfig;

pub const MAX_REDIRECTS: usize = 5;

/// How long a listing of this host's addresses is trusted: addresses come
/// and go (DHCP, VPNs, containers), so it is listed again after this.
pub const HOST_ADDRESSES_TTL: Duration = Duration::from_secs(10);

/// Idle connections kept per host, and for how long: enough to reuse a
/// connection for a page's next fetch, few enough that idle sockets stay
/// bounded.
const POOL_MAX_IDLE_PER_HOST: usize = 2;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// What kind of address an IP is, for deciding whether to connect to it.
/// Only [`AddressClass::Public`] may be fetched from (loopback too, when
/// opted in). The ranges follow the IANA special-purpose address registries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    /// 127/8, `::1`.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 100.64/10, carrier-grade NAT.
    SharedCgnat,
    /// fc00::/7 (and the deprecated site-local fec0::/10).
    UniqueLocal,
    /// 0.0.0.0/8 ("this network"), `::`.
    Unspecified,
    /// 224/4, ff00::/8.
    Multicast,
    /// 240/4 with 255.255.255.255, and IPv6 outside 2000::/3 that no other
    /// class covers (not allocated for global unicast).
    Reserved,
    /// 192.0.0/24, and what 2001::/23 holds besides the classes below.
    ProtocolAssignment,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24 (TEST-NET-1/2/3),
    /// 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18/15, 2001:2::/48.
    Benchmarking,
    /// 192.88.99/24, the deprecated 6to4 relay anycast.
    Relay6to4,
    /// `::a.b.c.d` (::/96, deprecated) around a public IPv4 address; one
    /// around a refused address takes that address's class.
    Ipv4Compatible,
    /// 2001::/32. Refused whatever it embeds: it tunnels to an address
    /// this side cannot check.
    Teredo,
    /// 100::/64 (discard-only) and 100:0:0:1::/64 (dummy prefix).
    DiscardOnly,
    /// 2001:10::/28 and 2001:20::/28, overlay identifiers, not locators.
    Orchid,
    /// 64:ff9b:1::/48, NAT64 for local use.
    Nat64LocalUse,
}

impl AddressClass {
    /// A short noun phrase, article included, for refusal messages.
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::SharedCgnat => "a carrier-grade NAT address",
            AddressClass::UniqueLocal => "a unique-local address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Reserved => "a reserved address",
            AddressClass::ProtocolAssignment => "an IETF protocol-assignment address",
            AddressClass::Documentation => "a documentation address",
            AddressClass::Benchmarking => "a benchmarking address",
            AddressClass::Relay6to4 => "a 6to4 relay anycast address",
            AddressClass::Ipv4Compatible => "a deprecated IPv4-compatible IPv6 address",
            AddressClass::Teredo => "a Teredo tunnel address",
            AddressClass::DiscardOnly => "a discard-only address",
            AddressClass::Orchid => "an ORCHID overlay identifier",
            AddressClass::Nat64LocalUse => "a local-use NAT64 address",
        }
    }
}

/// Classifies an address. IPv6 forms that embed an IPv4 address (see
/// [`embedded_ipv4`]) are classified by it.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => AddressClass::Unspecified,
        (10, _, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::SharedCgnat,
        (127, _, _) => AddressClass::Loopback,
        (169, 254, _) => AddressClass::LinkLocal,
        (172, 16..=31, _) => AddressClass::Private,
        (192, 0, 0) => AddressClass::ProtocolAssignment,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (192, 88, 99) => AddressClass::Relay6to4,
        (192, 168, _) => AddressClass::Private,
        (198, 18..=19, _) => AddressClass::Benchmarking,
        (224..=239, _, _) => AddressClass::Multicast,
        (240..=255, _, _) => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// How an IPv6 address carries an IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`: the IPv4 address itself, on a dual-stack socket.
    Mapped,
    /// `::a.b.c.d` (::/96, deprecated).
    Compatible,
    /// `64:ff9b::a.b.c.d`, the well-known NAT64 prefix.
    Nat64,
    /// `2002:aabb:ccdd::/48`, 6to4: the IPv4 address is bits 16–47.
    SixToFour,
}

/// The IPv4 address an IPv6 address stands for, if it is one of the forms
/// in [`Embedding`]. `::` and `::1` are not IPv4-compatible addresses.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<(Embedding, Ipv4Addr)> {
    let s = ip.segments();
    let low = || {
        let [.., a, b, c, d] = ip.octets();
        Ipv4Addr::new(a, b, c, d)
    };
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some((Embedding::Mapped, v4))
    } else if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        Some((Embedding::Compatible, low()))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some((Embedding::Nat64, low()))
    } else if s[0] == 0x2002 {
        let [_, _, a, b, c, d, ..] = ip.octets();
        Some((Embedding::SixToFour, Ipv4Addr::new(a, b, c, d)))
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if let Some((how, v4)) = embedded_ipv4(ip) {
        return match (how, classify_v4(v4)) {
            // Deprecated and tunnelled by nothing we trust: refused even
            // around a public address.
            (Embedding::Compatible, AddressClass::Public) => AddressClass::Ipv4Compatible,
            (_, class) => class,
        };
    }
    let s = ip.segments();
    if s[..3] == [0x64, 0xff9b, 1] {
        AddressClass::Nat64LocalUse
    } else if s[..4] == [0x100, 0, 0, 0] || s[..4] == [0x100, 0, 0, 1] {
        AddressClass::DiscardOnly
    } else if s[0] & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        AddressClass::UniqueLocal
    } else if s[0] & 0xe000 != 0x2000 {
        // Only 2000::/3 is allocated for global unicast; the rest of the
        // space is reserved by the IETF.
        AddressClass::Reserved
    } else if s[0] == 0x2001 && s[1] < 0x0200 {
        // 2001::/23, IETF protocol assignments. Its few globally reachable
        // blocks are anycast services (PCP, TURN, AMT, AS112, DRIP), not
        // web pages, so the whole block is refused.
        match s[1] {
            0 => AddressClass::Teredo,
            2 if s[2] == 0 => AddressClass::Benchmarking,
            0x10..=0x2f => AddressClass::Orchid,
            _ => AddressClass::ProtocolAssignment,
        }
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] < 0x1000) {
        AddressClass::Documentation
    } else {
        AddressClass::Public
    }
}

/// Whether `ip` is what `allow_loopback` opens: 127/8 or `::1` (also as
/// `::ffff:127.x.y.z`, which a dual-stack socket sends to 127/8), and not
/// a loopback address carried inside any other IPv6 form.
fn is_plain_loopback(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Why an address must not be fetched from, or `None` when it may be.
/// `host_addresses` are this host's own (see [`interface_addresses`]):
/// they are refused even when public, and that is the reason given, since
/// it is the one that matters. `allow_loopback` opens 127/8 and `::1`
/// only, though they are on the loopback interface.
pub fn refusal(
    ip: IpAddr,
    allow_loopback: bool,
    host_addresses: &HashSet<IpAddr>,
) -> Option<String> {
    if allow_loopback && is_plain_loopback(ip) {
        return None;
    }
    let class = classify(ip);
    let embedded = match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map(|(_, v4)| v4),
        IpAddr::V4(_) => None,
    };
    let on_this_host = host_addresses.contains(&ip)
        || embedded.is_some_and(|v4| host_addresses.contains(&IpAddr::V4(v4)));
    if on_this_host {
        return Some(match class {
            AddressClass::Public => {
                format!("{ip} is an address of this host; only public addresses may be fetched")
            }
            class => format!(
                "{ip} is an address of this host ({}); only public addresses may be fetched",
                class.describe()
            ),
        });
    }
    match (class, embedded) {
        (AddressClass::Public, _) => None,
        (class, Some(v4)) if class != AddressClass::Ipv4Compatible => Some(format!(
            "{ip} embeds {v4}, {}; only public addresses may be fetched",
            class.describe()
        )),
        (class, _) => Some(format!(
            "{ip} is {}; only public addresses may be fetched",
            class.describe()
        )),
    }
}

/// The addresses on this host's network interfaces, from `getifaddrs(3)`.
pub fn interface_addresses() -> std::io::Result<HashSet<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs only writes the head of a list it allocates; it is
    // freed once, below, and nothing read from it outlives that.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found = HashSet::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of that list, not yet freed. `ifa_addr`
        // is null or a sockaddr whose family says how large it is.
        unsafe {
            let node = &*entry;
            let addr = node.ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*addr.cast::<libc::sockaddr_in>();
                        found.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*addr.cast::<libc::sockaddr_in6>();
                        found.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            entry = node.ifa_next;
        }
    }
    // SAFETY: `list` came from getifaddrs above and is freed only here.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// This host's addresses, listed at most [`HOST_ADDRESSES_TTL`] ago.
#[derive(Default)]
struct HostAddresses {
    listed: Mutex<Option<(Instant, Arc<HashSet<IpAddr>>)>>,
}

impl HostAddresses {
    fn current(&self) -> Result<Arc<HashSet<IpAddr>>, String> {
        // The guarded value is replaced whole, so a poisoned lock still
        // holds a consistent listing.
        let mut listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, addresses)) = listed.as_ref() {
            if at.elapsed() < HOST_ADDRESSES_TTL {
                return Ok(Arc::clone(addresses));
            }
        }
        // Without the listing nothing can be told apart from this host, so
        // the fetch fails rather than guess.
        let addresses =
            Arc::new(interface_addresses().map_err(|e| {
                format!("cannot list this host's own addresses to refuse them: {e}")
            })?);
        *listed = Some((Instant::now(), Arc::clone(&addresses)));
        Ok(addresses)
    }
}

/// Decides, for every fetch and every resolver answer, whether an address
/// may be connected to.
struct AddressGuard {
    allow_loopback: bool,
    host: HostAddresses,
}

impl AddressGuard {
    fn check(&self, ip: IpAddr) -> Result<(), ResolveFailure> {
        let host_addresses = self.host.current().map_err(ResolveFailure::Failed)?;
        match refusal(ip, self.allow_loopback, &host_addresses) {
            Some(why) => Err(ResolveFailure::Refused(why)),
            None => Ok(()),
        }
    }
}

/// Why an address may not be connected to, or the client's resolver gave
/// none; found again inside the error reqwest returns, so the model gets
/// this text and not reqwest's wrapping.
#[derive(Debug)]
enum ResolveFailure {
    /// An address was refused: the reason.
    Refused(String),
    /// The lookup failed, or the guard could not decide: the whole message.
    Failed(String),
}

impl ResolveFailure {
    /// The message for a fetch of `url` that this stopped.
    fn for_url(&self, url: &Url) -> String {
        match self {
            ResolveFailure::Refused(why) => format!("refused to fetch {url}: {why}"),
            ResolveFailure::Failed(text) => format!("cannot fetch {url}: {text}"),
        }
    }
}

impl std::fmt::Display for ResolveFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveFailure::Refused(why) | ResolveFailure::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ResolveFailure {}

/// The client's only way to turn names into addresses: every address the
/// name has is checked, and one refused address refuses the name, so a
/// DNS answer mixing public and internal addresses gets nowhere.
struct CheckedResolver {
    guard: Arc<AddressGuard>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = Arc::clone(&self.guard);
        let name = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: the connector puts in the URL's port.
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((name.as_str(), 0)).await {
                Ok(addrs) => addrs.collect(),
                Err(e) => {
                    return Err(
                        ResolveFailure::Failed(format!("cannot resolve {name}: {e}")).into(),
                    )
                }
            };
            if addrs.is_empty() {
                return Err(
                    ResolveFailure::Failed(format!("{name} resolves to no address")).into(),
                );
            }
            for addr in &addrs {
                guard.check(addr.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A fetched page, as text for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub url: String,
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
    /// The body was cut at this many bytes.
    pub cut_at: Option<u64>,
}

impl Fetched {
    /// What the tool call returns: a status line, a blank line, the body,
    /// and a note when it was cut.
    pub fn to_content(&self) -> String {
        let mut out = format!("HTTP {} from {}", self.status, self.url);
        if let Some(kind) = &self.content_type {
            out.push_str(&format!(" ({kind})"));
        }
        out.push_str("\n\n");
        out.push_str(&self.body);
        if let Some(cut) = self.cut_at {
            out.push_str(&format!(
                "\n\n[cut: only the first {cut} bytes of the body are shown]"
            ));
        }
        out
    }
}

/// Fetches web pages under one [`WebConfig`], with one HTTP client for its
/// whole life (see the module doc). Made once, by `HostActions::new`.
pub struct WebFetcher {
    config: WebConfig,
    guard: Arc<AddressGuard>,
    /// `Err` if the client could not be set up; every fetch then says so.
    client: Result<reqwest::Client, String>,
}

impl WebFetcher {
    pub fn new(config: WebConfig) -> WebFetcher {
        let guard = Arc::new(AddressGuard {
            allow_loopback: config.allow_loopback,
            host: HostAddresses::default(),
        });
        let client = crate::tls::http_client()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver {
                guard: Arc::clone(&guard),
            }))
            // No per-request timeout: the one in `fetch` covers the whole
            // fetch, redirects included, and says so in its own words.
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!("talon/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                tracing::error!(error = %e, "cannot set up the HTTP client for web fetches");
                format!("cannot set up the HTTP client: {e}")
            });
        WebFetcher {
            config,
            guard,
            client,
        }
    }

    /// Fetches `url`; `max_bytes` may only lower the configured cap.
    pub async fn fetch(&self, url: &str, max_bytes: Option<u64>) -> Result<Fetched, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let config = &self.config;
        let cap = max_bytes.map_or(config.max_bytes, |asked| asked.min(config.max_bytes));
        match tokio::time::timeout(config.timeout, self.fetch_following(client, url, cap)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "fetching {url} took longer than {}; try a smaller or faster page",
                humantime::format_duration(config.timeout)
            )),
        }
    }

    async fn fetch_following(
        &self,
        client: &reqwest::Client,
        url: &str,
        cap: u64,
    ) -> Result<Fetched, String> {
        let mut url = Url::parse(url).map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
        for _ in 0..=MAX_REDIRECTS {
            self.check_target(&url)?;
            let mut response = client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| send_error(&url, &e))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| format!("{url} answered {status} without a usable Location"))?;
                url = url
                    .join(location)
                    .map_err(|e| format!("{url} redirects to an invalid URL {location:?}: {e}"))?;
                continue;
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut body: Vec<u8> = Vec::new();
            let mut cut_at = None;
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("reading {url} failed: {}", without_url(&e)))?
            {
                let room = usize::try_from(cap).unwrap_or(usize::MAX) - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    cut_at = Some(cap);
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(Fetched {
                url: url.to_string(),
                status: status.as_u16(),
                content_type,
                body: String::from_utf8_lossy(&body).into_owned(),
                cut_at,
            });
        }
        Err(format!(
            "too many redirects (more than {MAX_REDIRECTS}); the last was to {url}"
        ))
    }

    /// What can be checked before sending: the scheme, and an IP-literal
    /// host (the client's resolver never sees one). Names are checked by
    /// the resolver.
    fn check_target(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "only http and https URLs may be fetched, not {}:",
                url.scheme()
            ));
        }
        match host_of(url) {
            Some(Host::Ip(ip)) => self.guard.check(ip).map_err(|why| why.for_url(url)),
            Some(Host::Name) => Ok(()),
            None => Err(format!("{url} has no host")),
        }
    }
}

/// The message for a failed send: the resolver's own reason when it
/// stopped the request, reqwest's otherwise.
fn send_error(url: &Url, error: &reqwest::Error) -> String {
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        if let Some(failure) = inner.downcast_ref::<ResolveFailure>() {
            return failure.for_url(url);
        }
        cause = inner.source();
    }
    format!("cannot fetch {url}: {}", without_url(error))
}

/// reqwest's messages repeat the URL; the caller already names it.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(&format!(" ({url})"), "");
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{text}: {source}"),
        None => text,
    }
}

enum Host {
    Ip(IpAddr),
    Name,
}

/// The URL's host: an IP literal (IPv6 comes bracketed) or a name to
/// resolve. The connector tells them apart the same way, by parsing.
fn host_of(url: &Url) -> Option<Host> {
    let host = url.host_str()?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some(match bare.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Checks each address's class, in groups: a range's first and last
    /// addresses, and its neighbours just outside.
    fn assert_classes(cases: &[(&str, AddressClass)]) {
        for (text, expected) in cases {
            assert_eq!(classify(ip(text)), *expected, "{text}");
        }
    }

    #[test]
    fn ordinary_ipv4_ranges_are_classified() {
        use AddressClass::*;
        assert_classes(&[
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("0.0.0.0", Unspecified),
            ("0.255.255.255", Unspecified),
            ("1.0.0.0", Public),
            ("9.255.255.255", Public),
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("11.0.0.0", Public),
            ("100.63.255.255", Public),
            ("100.64.0.0", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("100.128.0.0", Public),
            ("126.255.255.255", Public),
            ("127.0.0.0", Loopback),
            ("127.9.9.9", Loopback),
            ("127.255.255.255", Loopback),
            ("128.0.0.0", Public),
            ("169.253.255.255", Public),
            ("169.254.0.0", LinkLocal),
            ("169.254.169.254", LinkLocal),
            ("169.254.255.255", LinkLocal),
            ("169.255.0.0", Public),
            ("172.15.255.255", Public),
            ("172.16.0.0", Private),
            ("172.31.255.255", Private),
            ("172.32.0.0", Public),
            ("192.167.255.255", Public),
            ("192.168.0.0", Private),
            ("192.168.255.255", Private),
            ("192.169.0.0", Public),
            ("223.255.255.255", Public),
            ("224.0.0.0", Multicast),
            ("239.255.255.255", Multicast),
            ("240.0.0.0", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Reserved),
        ]);
    }

    #[test]
    fn special_purpose_ipv4_ranges_are_classified() {
        use AddressClass::*;
        assert_classes(&[
            // 192.0.0.0/24, IETF protocol assignments.
            ("191.255.255.255", Public),
            ("192.0.0.0", ProtocolAssignment),
            ("192.0.0.170", ProtocolAssignment),
            ("192.0.0.255", ProtocolAssignment),
            ("192.0.1.0", Public),
            // TEST-NET-1.
            ("192.0.1.255", Public),
            ("192.0.2.0", Documentation),
            ("192.0.2.255", Documentation),
            ("192.0.3.0", Public),
            // TEST-NET-2.
            ("198.51.99.255", Public),
            ("198.51.100.0", Documentation),
            ("198.51.100.255", Documentation),
            ("198.51.101.0", Public),
            // TEST-NET-3.
            ("203.0.112.255", Public),
            ("203.0.113.0", Documentation),
            ("203.0.113.255", Documentation),
            ("203.0.114.0", Public),
            // 6to4 relay anycast.
            ("192.88.98.255", Public),
            ("192.88.99.0", Relay6to4),
            ("192.88.99.255", Relay6to4),
            ("192.88.100.0", Public),
            // Benchmarking, 198.18.0.0/15.
            ("198.17.255.255", Public),
            ("198.18.0.0", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("198.20.0.0", Public),
        ]);
    }

    #[test]
    fn ordinary_ipv6_ranges_are_classified() {
        use AddressClass::*;
        assert_classes(&[
            ("2606:4700::1111", Public),
            ("2000::", Public),
            ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe7f:ffff::1", Reserved),
            ("fe80::", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", LinkLocal),
            ("fec0::1", UniqueLocal),
            ("feff:ffff::1", UniqueLocal),
            ("fbff:ffff::1", Reserved),
            ("fc00::", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", UniqueLocal),
            ("fe00::1", Reserved),
            ("ff00::", Multicast),
            ("ff02::1", Multicast),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Multicast),
            // Outside 2000::/3 nothing is global unicast.
            ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("4000::1", Reserved),
            ("5f00::1", Reserved),
            ("::2:0:0:1", Reserved),
            ("::ffff:0:808:808", Reserved),
        ]);
    }

    #[test]
    fn special_purpose_ipv6_ranges_are_classified() {
        use AddressClass::*;
        assert_classes(&[
            // Teredo, 2001::/32.
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("2001::", Teredo),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Teredo),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Teredo),
            // The rest of 2001::/23, protocol assignments.
            ("2001:1::1", ProtocolAssignment),
            ("2001:3::1", ProtocolAssignment),
            ("2001:4:112::1", ProtocolAssignment),
            ("2001:30::1", ProtocolAssignment),
            ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", ProtocolAssignment),
            ("2001:200::1", Public),
            // Benchmarking, 2001:2::/48.
            ("2001:1:ffff:ffff:ffff:ffff:ffff:ffff", ProtocolAssignment),
            ("2001:2::", Benchmarking),
            ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Benchmarking),
            ("2001:2:1::", ProtocolAssignment),
            // ORCHID, 2001:10::/28, and ORCHIDv2, 2001:20::/28.
            ("2001:f:ffff:ffff:ffff:ffff:ffff:ffff", ProtocolAssignment),
            ("2001:10::", Orchid),
            ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", Orchid),
            ("2001:20::", Orchid),
            ("2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", Orchid),
            // Documentation, 2001:db8::/32 and 3fff::/20.
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("2001:db8::", Documentation),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", Documentation),
            ("2001:db9::", Public),
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("3fff::", Documentation),
            ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Documentation),
            ("3fff:1000::", Public),
            // Discard-only, 100::/64, and the dummy prefix 100:0:0:1::/64.
            ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("100::", DiscardOnly),
            ("100::ffff:ffff:ffff:ffff", DiscardOnly),
            ("100:0:0:1::", DiscardOnly),
            ("100:0:0:1:ffff:ffff:ffff:ffff", DiscardOnly),
            ("100:0:0:2::", Reserved),
            // NAT64 local use, 64:ff9b:1::/48.
            ("64:ff9b:0:ffff::1", Reserved),
            ("64:ff9b:1::", Nat64LocalUse),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Nat64LocalUse),
            ("64:ff9b:2::", Reserved),
        ]);
    }

    #[test]
    fn ipv6_forms_of_ipv4_are_judged_by_the_ipv4_address() {
        use AddressClass::*;
        assert_classes(&[
            // ::ffff:0:0/96, mapped.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:8.8.8.8", Public),
            ("::ffff:0.0.0.0", Unspecified),
            ("::fffe:808:808", Reserved),
            // 64:ff9b::/96, NAT64.
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::808:808", Public),
            ("64:ff9b::c000:201", Documentation),
            ("64:ff9b::1:808:808", Reserved),
            // ::/96, IPv4-compatible: refused even around a public address.
            ("::8.8.8.8", Ipv4Compatible),
            ("::0.0.0.2", Unspecified),
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("::255.255.255.255", Reserved),
            ("::1:0:0", Reserved),
            // 2002::/16, 6to4: the IPv4 address is bits 16–47.
            ("1fff:ffff::1", Reserved),
            ("2002:808:808::1", Public),
            ("2002:7f00:1::", Loopback),
            ("2002:a00:1:ffff::1", Private),
            ("2002:a9fe:a9fe::", LinkLocal),
            ("2002:c000:200::", Documentation),
            ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("2003::1", Public),
        ]);
        assert_eq!(
            embedded_ipv4("2002:c0a8:0101::1".parse().unwrap()),
            Some((Embedding::SixToFour, Ipv4Addr::new(192, 168, 1, 1)))
        );
        assert_eq!(embedded_ipv4("::1".parse().unwrap()), None);
        assert_eq!(embedded_ipv4("::".parse().unwrap()), None);
        assert_eq!(embedded_ipv4("2001::1".parse().unwrap()), None);
    }

    #[test]
    fn every_class_has_its_own_description() {
        use AddressClass::*;
        let all = [
            Public,
            Loopback,
            Private,
            LinkLocal,
            SharedCgnat,
            UniqueLocal,
            Unspecified,
            Multicast,
            Reserved,
            ProtocolAssignment,
            Documentation,
            Benchmarking,
            Relay6to4,
            Ipv4Compatible,
            Teredo,
            DiscardOnly,
            Orchid,
            Nat64LocalUse,
        ];
        let texts: HashSet<&str> = all.iter().map(|class| class.describe()).collect();
        assert_eq!(texts.len(), all.len());
    }

    #[test]
    fn only_public_addresses_and_opted_in_loopback_are_allowed() {
        let none = HashSet::new();
        assert_eq!(refusal(ip("8.8.8.8"), false, &none), None);
        assert_eq!(refusal(ip("2002:808:808::1"), false, &none), None);
        let why = refusal(ip("127.0.0.1"), false, &none).unwrap();
        assert!(why.contains("loopback"), "{why}");
        assert_eq!(refusal(ip("127.0.0.1"), true, &none), None);
        assert_eq!(refusal(ip("127.255.0.1"), true, &none), None);
        assert_eq!(refusal(ip("::1"), true, &none), None);
        assert_eq!(refusal(ip("::ffff:127.0.0.1"), true, &none), None);
        // Opting in to loopback opens nothing else, not even loopback
        // carried in other IPv6 forms.
        for other in [
            "10.0.0.1",
            "169.254.169.254",
            "fd00::1",
            "0.0.0.0",
            "::",
            "100.64.1.1",
            "192.0.2.1",
            "::127.0.0.1",
            "2002:7f00:1::",
            "64:ff9b::7f00:1",
            "2001::1",
        ] {
            assert!(refusal(ip(other), true, &none).is_some(), "{other}");
        }
        // Embedded addresses are named in the reason.
        let why = refusal(ip("2002:a00:1::"), false, &none).unwrap();
        assert!(
            why.contains("embeds 10.0.0.1") && why.contains("private"),
            "{why}"
        );
        let why = refusal(ip("::8.8.8.8"), false, &none).unwrap();
        assert!(why.contains("IPv4-compatible"), "{why}");
        let why = refusal(ip("2001:db8::1"), false, &none).unwrap();
        assert!(why.contains("documentation"), "{why}");
    }

    #[test]
    fn this_hosts_own_addresses_are_refused_as_such() {
        let host: HashSet<IpAddr> = ["203.0.113.7", "2a01:4f8::7", "127.0.0.1", "10.0.0.5"]
            .into_iter()
            .map(ip)
            .collect();
        // A public address is refused when it is this host's, in every
        // form that reaches it.
        for form in [
            "203.0.113.7",
            "::ffff:203.0.113.7",
            "64:ff9b::cb00:7107",
            "2002:cb00:7107::1",
            "2a01:4f8::7",
        ] {
            let why = refusal(ip(form), true, &host).unwrap_or_default();
            assert!(why.contains("is an address of this host"), "{form}: {why}");
        }
        let why = refusal(ip("2a01:4f8::7"), false, &host).unwrap_or_default();
        assert_eq!(
            why,
            "2a01:4f8::7 is an address of this host; only public addresses may be fetched"
        );
        // Other public addresses stay allowed.
        assert_eq!(refusal(ip("2a01:4f8::8"), false, &host), None);
        // The host reason comes first, and keeps the class.
        let why = refusal(ip("10.0.0.5"), true, &host).unwrap_or_default();
        assert!(
            why.contains("this host") && why.contains("private"),
            "{why}"
        );
        let why = refusal(ip("127.0.0.1"), false, &host).unwrap_or_default();
        assert!(
            why.contains("this host") && why.contains("loopback"),
            "{why}"
        );
        // Opted-in loopback is allowed though it is on `lo`.
        assert_eq!(refusal(ip("127.0.0.1"), true, &host), None);
    }

    #[test]
    fn interface_addresses_include_loopback() {
        let addresses = interface_addresses().expect("getifaddrs");
        assert!(addresses.contains(&ip("127.0.0.1")), "{addresses:?}");
    }

    /// Some address of this machine other than loopback, if it has one.
    fn own_non_loopback_v4() -> Option<Ipv4Addr> {
        interface_addresses()
            .ok()?
            .into_iter()
            .find_map(|addr| match addr {
                IpAddr::V4(v4) if !v4.is_loopback() => Some(v4),
                _ => None,
            })
    }

    fn loopback_config() -> WebConfig {
        WebConfig {
            allow_loopback: true,
            timeout: Duration::from_secs(10),
            max_bytes: 1000,
        }
    }

    /// A keep-alive HTTP/1.1 server on `bind` answering "ok" to every
    /// request; counts the connections it accepts.
    async fn counting_server(bind: &str) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn other_schemes_and_refused_literals_are_refused_before_connecting() {
        let fetcher = WebFetcher::new(WebConfig::default());
        for (url, phrase) in [
            ("file:///etc/passwd", "only http and https"),
            ("ftp://example.com/x", "only http and https"),
            ("http://10.0.0.1/", "private"),
            ("http://[::1]:8080/", "loopback"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://192.0.2.1/", "documentation"),
            ("http://[2001:db8::1]/", "documentation"),
            ("http://[::ffff:a9fe:a9fe]/", "link-local"),
            ("http://2130706433/", "loopback"),
            ("not a url", "not a valid URL"),
        ] {
            let err = fetcher.fetch(url, None).await.unwrap_err();
            assert!(err.contains(phrase), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn names_are_refused_by_the_resolver() {
        let (addr, accepted) = counting_server("127.0.0.1:0").await;
        let strict = WebFetcher::new(WebConfig::default());
        let url = format!("http://localhost:{}/", addr.port());
        let err = strict.fetch(&url, None).await.unwrap_err();
        assert!(
            err.starts_with(&format!("refused to fetch {url}: ")) && err.contains("loopback"),
            "{err}"
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Opted in, the same name resolves to allowed addresses.
        let open = WebFetcher::new(loopback_config());
        let fetched = open.fetch(&url, None).await.unwrap();
        assert_eq!((fetched.status, fetched.body.as_str()), (200, "ok"));
        let err = open
            .fetch("http://no-such-host.invalid/", None)
            .await
            .unwrap_err();
        assert!(err.contains("cannot resolve no-such-host.invalid"), "{err}");
    }

    #[tokio::test]
    async fn this_hosts_own_address_is_refused_even_with_loopback_allowed() {
        let Some(own) = own_non_loopback_v4() else {
            eprintln!("no non-loopback IPv4 address here; skipped");
            return;
        };
        let (addr, accepted) = counting_server("0.0.0.0:0").await;
        let fetcher = WebFetcher::new(loopback_config());
        let url = format!("http://{own}:{}/", addr.port());
        let err = fetcher.fetch(&url, None).await.unwrap_err();
        assert!(err.contains("is an address of this host"), "{err}");
        let mapped = format!("http://[::ffff:{own}]:{}/", addr.port());
        let err = fetcher.fetch(&mapped, None).await.unwrap_err();
        assert!(err.contains("this host"), "{err}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn one_client_serves_every_fetch() {
        let (addr, accepted) = counting_server("127.0.0.1:0").await;
        let fetcher = WebFetcher::new(loopback_config());
        for _ in 0..5 {
            let fetched = fetcher
                .fetch(&format!("http://{addr}/"), None)
                .await
                .unwrap();
            assert_eq!(fetched.body, "ok");
        }
        // One pooled connection, reused, rather than a client (and a
        // socket) per fetch.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
