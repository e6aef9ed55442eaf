//! `clickstream_clean`: stateless clean-up of page-view events.
//!
//! Drops what should never reach a model — bot traffic (by user agent), URLs that are
//! not http(s), negative or absurd dwell times — and derives clean fields from what
//! remains: the normalised path and domain, the referrer's domain and whether the
//! visit came from inside the site, dwell time in seconds, a mobile flag, and the UTC
//! hour and weekday of the view.

use lockstep_sdk::prelude::*;

const BOT_MARKERS: [&str; 8] = [
    "bot",
    "crawler",
    "spider",
    "slurp",
    "curl/",
    "wget/",
    "python-requests",
    "headless",
];
const MOBILE_MARKERS: [&str; 4] = ["mobile", "android", "iphone", "ipad"];
/// Views longer than this are tabs left open, not attention.
const MAX_DWELL_MS: i64 = 6 * 3600 * 1000;

/// One page view. Its fields are the input schema (`#[derive(Event)]`).
#[derive(Deserialize, Event)]
pub struct PageView<'a> {
    /// visitor identifier
    #[event(key)]
    pub user_id: &'a str,
    /// view time
    #[event(time)]
    pub ts: Timestamp,
    /// page URL
    pub url: &'a str,
    /// referring URL
    pub referrer: Option<&'a str>,
    /// browser user agent
    pub user_agent: Option<&'a str>,
    /// time on page in milliseconds
    pub dwell_ms: Option<i64>,
    /// event id, used to drop duplicates
    #[event(id)]
    pub event_id: Option<&'a str>,
}

/// The cleaned view. Its fields are the features, in order (`#[derive(Features)]`).
#[derive(Serialize, Features, Debug, Clone, PartialEq)]
pub struct CleanView {
    /// host without www. and port
    pub page_domain: String,
    /// lowercase path without query or trailing slash
    pub page_path: String,
    /// referrer host, if any
    pub referrer_domain: Option<String>,
    /// referrer is the same site
    #[feat(default = false)]
    pub is_internal_referral: bool,
    /// time on page in seconds, if plausible
    pub dwell_seconds: Option<f64>,
    /// user agent is a mobile device
    #[feat(default = false)]
    pub is_mobile: bool,
    /// UTC hour of the view (0-23)
    pub hour_of_day: i64,
    /// UTC weekday of the view (0 = Monday)
    pub day_of_week: i64,
}

/// The transform.
pub struct ClickstreamClean;

/// Splits an http(s) URL into lowercase host (without `www.` and port) and a path
/// without query, fragment, repeated or trailing slashes. `None` if not http(s).
fn split_url(url: &str) -> Option<(String, String)> {
    let url = url.trim();
    let lower_scheme = url
        .get(..8)
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    let rest = if lower_scheme.starts_with("https://") {
        &url[8..]
    } else if lower_scheme.starts_with("http://") {
        &url[7..]
    } else {
        return None;
    };
    let end_of_host = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end_of_host];
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    let host = host.strip_prefix("www.").unwrap_or(&host).to_owned();
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return None;
    }
    let after = &rest[end_of_host..];
    let path_end = after.find(['?', '#']).unwrap_or(after.len());
    let segments: Vec<&str> = after[..path_end]
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let path = format!("/{}", segments.join("/")).to_lowercase();
    Some((host, path))
}

fn contains_any(haystack: &str, needles: &[&str]) -> bool {
    let lower = haystack.to_ascii_lowercase();
    needles.iter().any(|n| lower.contains(n))
}

impl Transform for ClickstreamClean {
    type Event<'a> = PageView<'a>;
    type Row = CleanView;
    type State = ();

    fn manifest() -> Manifest {
        lockstep_sdk::schema::manifest::<Self>("clickstream_clean", "1.0.0")
            .description(
                "Page views with bots and invalid records removed and clean fields derived.",
            )
            .build()
    }

    fn apply(_: &mut (), v: PageView<'_>, out: &mut Emit<'_, CleanView>) -> Result<(), Error> {
        let agent = v.user_agent.unwrap_or("");
        if contains_any(agent, &BOT_MARKERS) {
            return Ok(());
        }
        let Some((page_domain, page_path)) = split_url(v.url) else {
            return Ok(());
        };
        let referrer_domain = v.referrer.and_then(split_url).map(|(host, _)| host);
        let secs = v.ts.secs();
        let days = secs.div_euclid(86_400);
        out.emit(CleanView {
            is_internal_referral: referrer_domain.as_deref() == Some(page_domain.as_str()),
            page_domain,
            page_path,
            referrer_domain,
            dwell_seconds: v
                .dwell_ms
                .filter(|ms| (0..=MAX_DWELL_MS).contains(ms))
                .map(|ms| ms as f64 / 1000.0),
            is_mobile: contains_any(agent, &MOBILE_MARKERS),
            hour_of_day: secs.rem_euclid(86_400) / 3600,
            // 1970-01-01 was a Thursday (3 with Monday = 0).
            day_of_week: (days + 3).rem_euclid(7),
        })
    }
}

lockstep_sdk::export!(ClickstreamClean);

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_sdk::testing::{check_derived, check_manifest, run_timed};

    fn view<'a>(
        url: &'a str,
        referrer: Option<&'a str>,
        agent: Option<&'a str>,
        dwell: Option<i64>,
    ) -> (Timestamp, PageView<'a>) {
        // 2024-01-01T13:00:00Z, a Monday.
        let ts = Timestamp::from_secs(1_704_114_000);
        (
            ts,
            PageView {
                user_id: "u",
                ts,
                url,
                referrer,
                user_agent: agent,
                dwell_ms: dwell,
                event_id: None,
            },
        )
    }

    #[test]
    fn manifest_is_valid() {
        check_manifest::<ClickstreamClean>().expect("valid");
        check_derived::<ClickstreamClean>().expect("the manifest matches the structs");
    }

    #[test]
    fn cleans_filters_and_derives() {
        let rows = run_timed::<ClickstreamClean>(
            &mut (),
            [
                view(
                    "HTTPS://WWW.Shop.example:443//Cart/?x=1#top",
                    Some("https://shop.example/home"),
                    Some("Mozilla (iPhone)"),
                    Some(1500),
                ),
                view("https://shop.example/", None, Some("Googlebot/2.1"), None),
                view("javascript:alert(1)", None, None, None),
                view("http://a.example/p", Some("not a url"), None, Some(-5)),
            ],
        )
        .expect("apply");
        assert_eq!(rows.len(), 2, "bot and non-http rows are dropped");
        let r = &rows[0].1;
        assert_eq!(
            (r.page_domain.as_str(), r.page_path.as_str()),
            ("shop.example", "/cart")
        );
        assert_eq!(r.referrer_domain.as_deref(), Some("shop.example"));
        assert!(r.is_internal_referral && r.is_mobile);
        assert_eq!(
            (r.dwell_seconds, r.hour_of_day, r.day_of_week),
            (Some(1.5), 13, 0)
        );
        let r = &rows[1].1;
        assert_eq!(
            (
                r.page_path.as_str(),
                r.referrer_domain.as_deref(),
                r.dwell_seconds
            ),
            ("/p", None, None)
        );
    }
}
