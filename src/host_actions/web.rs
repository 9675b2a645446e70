//! The agent's web fetch, done by the host (SPEC §6): the default container
//! has no network, so this is its only way out, and it must not become a way
//! into the host's own network. Only http and https; every name is resolved
//! here and every address checked ([`classify`]) before connecting, and the
//! connection is pinned to the checked addresses so a second DNS answer
//! cannot swap in an internal one. Redirects are followed by hand (at most
//! [`MAX_REDIRECTS`]) so each target is checked the same way. A time limit
//! covers the whole fetch, and the body is cut at a size cap.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

use crate::config::WebConfig;

pub const MAX_REDIRECTS: usize = 5;

/// What kind of address an IP is, for deciding whether to connect to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 100.64/10, carrier-grade NAT.
    SharedCgnat,
    /// fc00::/7 (and the deprecated site-local fec0::/10).
    UniqueLocal,
    /// 0.0.0.0/8, `::`.
    Unspecified,
    Multicast,
    /// 255.255.255.255, 240/4, 192.0.0/24, 198.18/15.
    Reserved,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::SharedCgnat => "carrier-grade NAT",
            AddressClass::UniqueLocal => "unique-local",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Multicast => "multicast",
            AddressClass::Reserved => "reserved",
        }
    }
}

/// Classifies an address. IPv6 forms that embed an IPv4 address
/// (`::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) are classified by it.
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
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) => AddressClass::Private,
        (172, 16..=31, _) => AddressClass::Private,
        (192, 168, _) => AddressClass::Private,
        (169, 254, _) => AddressClass::LinkLocal,
        (100, 64..=127, _) => AddressClass::SharedCgnat,
        (224..=239, _, _) => AddressClass::Multicast,
        (240..=255, _, _) => AddressClass::Reserved,
        (192, 0, 0) => AddressClass::Reserved,
        (198, 18..=19, _) => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b, c, d] = ip.octets();
        return classify_v4(Ipv4Addr::new(a, b, c, d));
    }
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if segments[0] & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if segments[0] & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if segments[0] & 0xfe00 == 0xfc00 || segments[0] & 0xffc0 == 0xfec0 {
        AddressClass::UniqueLocal
    } else {
        AddressClass::Public
    }
}

/// Why an address must not be fetched from, or `None` when it may be.
pub fn refusal(ip: IpAddr, allow_loopback: bool) -> Option<String> {
    match classify(ip) {
        AddressClass::Public => None,
        AddressClass::Loopback if allow_loopback => None,
        class => Some(format!(
            "{ip} is a {} address; only public addresses may be fetched",
            class.describe()
        )),
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

/// Fetches `url` under `config`; `max_bytes` may only lower the cap.
pub async fn fetch(
    config: &WebConfig,
    url: &str,
    max_bytes: Option<u64>,
) -> Result<Fetched, String> {
    let cap = max_bytes.map_or(config.max_bytes, |asked| asked.min(config.max_bytes));
    match tokio::time::timeout(config.timeout, fetch_following(config, url, cap)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "fetching {url} took longer than {}; try a smaller or faster page",
            humantime::format_duration(config.timeout)
        )),
    }
}

async fn fetch_following(config: &WebConfig, url: &str, cap: u64) -> Result<Fetched, String> {
    let mut url = Url::parse(url).map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
    for _ in 0..=MAX_REDIRECTS {
        let addrs = checked_addresses(&url, config.allow_loopback).await?;
        let client = pinned_client(&url, &addrs, config.timeout)?;
        let mut response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("cannot fetch {url}: {}", without_url(&e)))?;
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

enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// The URL's host: an IP literal (IPv6 comes bracketed) or a name to resolve.
fn host_of(url: &Url) -> Option<Host<'_>> {
    let host = url.host_str()?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some(match bare.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(host),
    })
}

/// The URL's addresses, all checked; refuses the URL if any is not allowed.
async fn checked_addresses(url: &Url, allow_loopback: bool) -> Result<Vec<SocketAddr>, String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "only http and https URLs may be fetched, not {}:",
            url.scheme()
        ));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("{url} has no port"))?;
    let addrs: Vec<SocketAddr> = match host_of(url) {
        Some(Host::Ip(ip)) => vec![SocketAddr::new(ip, port)],
        Some(Host::Name(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .collect(),
        None => return Err(format!("{url} has no host")),
    };
    if addrs.is_empty() {
        return Err(format!("{url}: the name resolves to no address"));
    }
    for addr in &addrs {
        if let Some(why) = refusal(addr.ip(), allow_loopback) {
            return Err(format!("refused to fetch {url}: {why}"));
        }
    }
    Ok(addrs)
}

/// A client that connects only to `addrs` for the URL's host, follows no
/// redirect and ignores proxy settings (a proxy would resolve names itself).
fn pinned_client(
    url: &Url,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .user_agent(concat!("talon/", env!("CARGO_PKG_VERSION")));
    if let Some(Host::Name(name)) = host_of(url) {
        builder = builder.resolve_to_addrs(name, addrs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        use AddressClass::*;
        let cases: &[(&str, AddressClass)] = &[
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("172.15.255.255", Public),
            ("172.32.0.1", Public),
            ("100.63.255.255", Public),
            ("100.128.0.1", Public),
            ("2606:4700::1111", Public),
            ("127.0.0.1", Loopback),
            ("127.9.9.9", Loopback),
            ("::1", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("fe80::1", LinkLocal),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Reserved),
            ("240.0.0.1", Reserved),
            ("198.18.0.1", Reserved),
            // IPv4 inside IPv6 is judged by the IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:8.8.8.8", Public),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
        ];
        for (text, expected) in cases {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(classify(ip), *expected, "{text}");
        }
    }

    #[test]
    fn only_public_addresses_and_opted_in_loopback_are_allowed() {
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert_eq!(refusal(ip("8.8.8.8"), false), None);
        let why = refusal(ip("127.0.0.1"), false).unwrap();
        assert!(why.contains("loopback"), "{why}");
        assert_eq!(refusal(ip("127.0.0.1"), true), None);
        assert_eq!(refusal(ip("::1"), true), None);
        // Opting in to loopback opens nothing else.
        for other in [
            "10.0.0.1",
            "169.254.169.254",
            "fd00::1",
            "0.0.0.0",
            "100.64.1.1",
        ] {
            assert!(refusal(ip(other), true).is_some(), "{other}");
        }
    }

    #[tokio::test]
    async fn other_schemes_and_private_literals_are_refused_before_connecting() {
        let config = WebConfig::default();
        for (url, phrase) in [
            ("file:///etc/passwd", "only http and https"),
            ("ftp://example.com/x", "only http and https"),
            ("http://10.0.0.1/", "private"),
            ("http://[::1]:8080/", "loopback"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("not a url", "not a valid URL"),
        ] {
            let err = fetch(&config, url, None).await.unwrap_err();
            assert!(err.contains(phrase), "{url}: {err}");
        }
    }
}
