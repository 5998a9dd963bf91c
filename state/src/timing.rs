//! When to renew a certificate and how long to wait after a failure.

use crate::{CertMeta, UnixTime};

/// Ten days: below this lifetime, renew at half of it instead of two thirds.
const SHORT_LIFETIME_SECS: i64 = 10 * 86_400;
/// First retry delay after a failure.
const BACKOFF_BASE_SECS: i64 = 5;
/// No failure ever waits longer than a day before the next try (unless the CA says so).
pub const BACKOFF_CAP_SECS: i64 = 86_400;

/// The renewal time of a certificate without ARI: two thirds into its lifetime, or half-way for
/// lifetimes under ten days (short-lived certificates need more room for a failed renewal).
pub fn renewal_time(not_before: UnixTime, not_after: UnixTime) -> UnixTime {
    let lifetime = (not_after - not_before).max(0);
    if lifetime < SHORT_LIFETIME_SECS {
        not_before + lifetime / 2
    } else {
        not_before + lifetime * 2 / 3
    }
}

/// [`renewal_time`] of `meta`, brought forward by up to a thirtieth of its lifetime (3 days of
/// 90, 1.5 of 45, 4.8 hours of 6) by a draw from the certificate's own serial, which the CA
/// makes random: certificates issued in the same minute (a first start with 10,000 names, a
/// bulk import, a fleet moved at once) do not all fall due in the same minute, and each keeps
/// its time across restarts and wherever it is computed (no stored draw).
pub fn renewal_time_of(meta: &CertMeta) -> UnixTime {
    let base = renewal_time(meta.not_before, meta.not_after);
    base - renewal_spread(meta)
}

/// How far [`renewal_time_of`] brings the renewal of `meta` forward: 0 up to a thirtieth of
/// its lifetime, from the serial's last 15 hex digits (a public CA's serial holds at least 64
/// random bits).
pub fn renewal_spread(meta: &CertMeta) -> UnixTime {
    let lifetime = (meta.not_after - meta.not_before).max(0);
    let spread = u64::try_from(lifetime / 30).unwrap_or(0);
    if spread == 0 {
        return 0;
    }
    let hex = meta.serial.trim();
    let tail = &hex[hex.len().saturating_sub(15)..];
    let draw = u64::from_str_radix(tail, 16).unwrap_or(0);
    i64::try_from(draw % (spread + 1)).unwrap_or(0)
}

/// Without a `Retry-After`, renewal information is asked for again after this long ("about
/// twice a day").
pub const ARI_CHECK_SECS: i64 = 12 * 3600;
/// Bounds on the CA's `Retry-After` for renewal information: not hammering it, not going a day
/// without news (a revocation shortens the window).
const ARI_MIN_CHECK_SECS: i64 = 3600;
const ARI_MAX_CHECK_SECS: i64 = 24 * 3600;

/// The renewal time inside a suggested window (RFC 9773 §4.2: a uniformly random point, so a
/// CA's clients do not all come at once). `jitter_permille` (0..=1000) is the draw. A time in the
/// past means "renew now", which the caller gets by comparing with the clock.
pub fn ari_renewal_time(window: (UnixTime, UnixTime), jitter_permille: u16) -> UnixTime {
    let (start, end) = window;
    let span = (end - start).max(0);
    start + span * i64::from(jitter_permille.min(1000)) / 1000
}

/// The renewal time inside a suggested window for a certificate valid from `not_before` to
/// `not_after`: [`ari_renewal_time`] in the part of the window before the last tenth of the
/// lifetime (the window's start if it begins there). A window that ends at expiry (pebble's for
/// a certificate under 36 hours, a CA's clamp) would otherwise let the draw fall at the very
/// end, leaving no time for a failed attempt; the draw is spread over what is left rather than
/// cut off at its end (which put a tenth of the certificates issued together at one instant);
/// a real window (Let's Encrypt's: two days around two thirds) is unchanged.
pub fn ari_renewal_time_for(
    window: (UnixTime, UnixTime),
    jitter_permille: u16,
    not_before: UnixTime,
    not_after: UnixTime,
) -> UnixTime {
    let latest = not_after - (not_after - not_before).max(0) / 10;
    let (start, end) = window;
    ari_renewal_time((start, end.min(latest.max(start))), jitter_permille)
}

/// When to ask for renewal information again: the CA's `Retry-After`, bounded to between an
/// hour and a day; twelve hours without one.
pub fn ari_next_check(now: UnixTime, retry_after: Option<UnixTime>) -> UnixTime {
    match retry_after {
        Some(t) => (t - now).clamp(ARI_MIN_CHECK_SECS, ARI_MAX_CHECK_SECS) + now,
        None => now + ARI_CHECK_SECS,
    }
}

/// Delay before retry number `attempts` (1 = after the first failure): exponential from 5 s,
/// capped at a day, scaled by a jitter factor in [0.5, 1.0] from `jitter_permille` (0..=1000) so
/// that many certificates failing together do not retry together.
pub fn backoff_secs(attempts: u32, jitter_permille: u16) -> i64 {
    let exp = attempts.saturating_sub(1).min(20);
    let full = BACKOFF_BASE_SECS
        .saturating_mul(1_i64 << exp)
        .min(BACKOFF_CAP_SECS);
    let jitter = i64::from(jitter_permille.min(1000));
    (full * (1000 + jitter) / 2000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_ending_at_expiry_never_puts_the_renewal_in_the_last_tenth() {
        // A 20-second certificate whose window is its whole lifetime (pebble 2.10).
        assert_eq!(ari_renewal_time_for((100, 120), 1000, 100, 120), 118);
        assert_eq!(ari_renewal_time_for((100, 120), 500, 100, 120), 109);
        // A window that starts in the last tenth keeps its start.
        assert_eq!(ari_renewal_time_for((119, 120), 1000, 100, 120), 119);
        // Let's Encrypt's window (two days around two thirds of 90 days) is unchanged.
        let day = 86_400;
        let w = (59 * day, 61 * day);
        assert_eq!(ari_renewal_time_for(w, 1000, 0, 90 * day), 61 * day);
    }

    #[test]
    fn a_window_ending_at_expiry_gives_every_draw_its_own_time() {
        // pebble 2.10's window for a certificate under 36 hours: its whole lifetime. Certificates
        // issued together get the same window; each draw must keep its own time (capping the
        // draw at the last tenth put the draws from 900 to 1000, a tenth of them, at one instant).
        let (nb, na) = (1000, 1000 + 6 * 3600);
        let times: std::collections::BTreeSet<_> = (0..=1000)
            .map(|j| ari_renewal_time_for((nb, na), j, nb, na))
            .collect();
        assert_eq!(times.len(), 1001);
        assert_eq!(times.first(), Some(&nb));
        assert_eq!(times.last(), Some(&(na - 6 * 3600 / 10)));
    }

    #[test]
    fn certificates_issued_together_fall_due_spread_over_a_thirtieth_of_their_lifetime() {
        let day = 86_400;
        let meta = |serial: String, lifetime: i64| CertMeta {
            serial,
            not_before: 1000,
            not_after: 1000 + lifetime,
            fingerprint: String::new(),
            issued_at: 1000,
        };
        // 10,000 certificates of 90 days issued in the same second, serials as a CA draws them.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut per_minute = std::collections::BTreeMap::<i64, u32>::new();
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let m = meta(format!("{x:016X}"), 90 * day);
            let t = renewal_time_of(&m);
            assert!(
                t <= 1000 + 60 * day && t >= 1000 + 57 * day,
                "within 3 days before 2/3"
            );
            assert_eq!(
                t,
                renewal_time_of(&m),
                "the same time each time it is computed"
            );
            *per_minute.entry(t / 60).or_default() += 1;
        }
        // Spread over 3 days (4,320 minutes): ~2.3 a minute on average, never a storm.
        let busiest = per_minute.values().max().copied().unwrap();
        assert!(busiest <= 12, "{busiest} fell due in the busiest minute");
        assert!(
            per_minute.len() > 2_500,
            "{} minutes used",
            per_minute.len()
        );
        // Certificates under 30 s are not moved; 6-day ones by up to 4.8 hours.
        assert_eq!(renewal_time_of(&meta("FFFF".into(), 20)), 1010);
        let six = renewal_time_of(&meta("FFFFFFFFFFFFFFFF".into(), 6 * day));
        assert!(six <= 1000 + 3 * day && six >= 1000 + 3 * day - 6 * day / 30);
    }

    #[test]
    fn renewal_at_two_thirds_or_half() {
        let day = 86_400;
        // (lifetime in seconds, expected offset of the renewal time from not_before)
        let table = [
            (90 * day, 60 * day),
            (30 * day, 20 * day),
            (10 * day, 10 * day * 2 / 3),
            (10 * day - 1, (10 * day - 1) / 2),
            (6 * day, 3 * day),
            (600, 300),
            (0, 0),
        ];
        for (lifetime, offset) in table {
            assert_eq!(
                renewal_time(1000, 1000 + lifetime),
                1000 + offset,
                "lifetime {lifetime}"
            );
        }
        assert_eq!(
            renewal_time(1000, 500),
            1000,
            "a backwards validity renews at once"
        );
    }

    /// Renewal information as RFC 9773 §4.2 shows it (its example response), and as Let's
    /// Encrypt answers for a revoked certificate (a window in the past).
    #[test]
    fn ari_windows_from_recorded_responses() {
        // {"suggestedWindow": {"start": "2025-01-02T04:00:00Z", "end": "2025-01-03T04:00:00Z"},
        //  "explanationURL": "https://acme.example.com/docs/ari"}, Retry-After: 21600
        let start = 1_735_790_400; // 2025-01-02T04:00:00Z
        let end = 1_735_876_800; // 2025-01-03T04:00:00Z
        let now = start - 10 * 86_400;
        assert_eq!(ari_renewal_time((start, end), 0), start);
        assert_eq!(ari_renewal_time((start, end), 1000), end);
        assert_eq!(ari_renewal_time((start, end), 500), start + 43_200);
        assert_eq!(ari_next_check(now, Some(now + 21_600)), now + 21_600);
        assert_eq!(ari_next_check(now, None), now + 12 * 3600);
        assert_eq!(
            ari_next_check(now, Some(now + 5)),
            now + 3600,
            "at most hourly"
        );
        assert_eq!(
            ari_next_check(now, Some(now + 30 * 86_400)),
            now + 86_400,
            "at least daily"
        );
        // Revoked: the window lies in the past, so the chosen time is already due.
        let revoked = (now - 86_400, now - 3600);
        assert!(ari_renewal_time(revoked, 1000) < now);
        // A backwards window is taken at its start.
        assert_eq!(ari_renewal_time((end, start), 700), end);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        assert_eq!(backoff_secs(1, 1000), 5);
        assert_eq!(backoff_secs(2, 1000), 10);
        assert_eq!(backoff_secs(3, 1000), 20);
        assert_eq!(backoff_secs(1, 0), 2, "jitter halves at most");
        assert_eq!(backoff_secs(40, 1000), BACKOFF_CAP_SECS);
        assert_eq!(backoff_secs(u32::MAX, 1000), BACKOFF_CAP_SECS);
        assert!(backoff_secs(40, 0) >= BACKOFF_CAP_SECS / 2);
        for attempts in 1..30 {
            assert!(backoff_secs(attempts + 1, 1000) >= backoff_secs(attempts, 1000));
        }
    }
}
