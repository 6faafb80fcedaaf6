//! What happens to failing and excess requests of an upstream: `retry` and `circuit_breaker`.

use std::time::Duration;

use super::super::spanned::Spanned;

use super::super::file;
use super::super::model::{CircuitBreakerConfig, RetryConfig};
use super::Validator;

impl Validator<'_, '_> {
    /// `[upstreams.NAME.retry]` over the defaults.
    pub(super) fn retry(&mut self, r: Option<&Spanned<file::RetrySection>>) -> RetryConfig {
        let mut out = RetryConfig {
            attempts: 2,
            on_connect_failure: true,
            on_reset: true,
            on_timeout: false,
            statuses: Vec::new(),
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_ratio: 0.2,
            budget_min_retries: 3,
        };
        let Some(r) = r else {
            return out;
        };
        let s = r.get_ref();
        if let Some(a) = s.attempts {
            out.attempts = a.min(10);
        }
        if let Some(on) = &s.on {
            out.on_connect_failure = false;
            out.on_reset = false;
            out.on_timeout = false;
            for cond in on {
                match cond.get_ref().as_str() {
                    "connect_failure" => out.on_connect_failure = true,
                    "reset" => out.on_reset = true,
                    "timeout" => out.on_timeout = true,
                    other => self.c.at(
                        cond.span(),
                        format!("unknown retry condition `{other}`: use \"connect_failure\", \"reset\" or \"timeout\" (statuses go in `statuses`)"),
                    ),
                }
            }
        }
        if let Some(st) = &s.statuses {
            out.statuses = st.iter().map(|r| (r.get_ref().0, r.get_ref().1)).collect();
        }
        if let Some(t) = &s.per_try_timeout {
            if t.get_ref().0.is_zero() {
                self.c.at(t.span(), "`per_try_timeout` must be above 0");
            }
            out.per_try_timeout = Some(t.get_ref().0);
        }
        if let Some(b) = &s.backoff_base {
            out.backoff_base = b.get_ref().0;
        }
        if let Some(b) = &s.backoff_max {
            out.backoff_max = b.get_ref().0;
            if out.backoff_max < out.backoff_base {
                self.c
                    .at(b.span(), "`backoff_max` must not be below `backoff_base`");
            }
        }
        if let Some(ratio) = &s.budget_ratio {
            let v = *ratio.get_ref();
            if !(0.0..=1.0).contains(&v) {
                self.c
                    .at(ratio.span(), "`budget_ratio` must be between 0.0 and 1.0");
            } else {
                out.budget_ratio = v;
            }
        }
        if let Some(m) = s.budget_min_retries {
            out.budget_min_retries = m;
        }
        out
    }

    /// `[upstreams.NAME.circuit_breaker]`: no limit unless given.
    pub(super) fn circuit_breaker(
        &mut self,
        c: Option<&Spanned<file::CircuitBreakerSection>>,
    ) -> CircuitBreakerConfig {
        let Some(c) = c else {
            return CircuitBreakerConfig::default();
        };
        let s = c.get_ref();
        let mut limit = |v: &Option<Spanned<u32>>, key: &str| {
            v.as_ref().map(|n| {
                if *n.get_ref() == 0 {
                    self.c.at(
                        n.span(),
                        format!("`{key}` must be at least 1 (leave it out for no limit)"),
                    );
                }
                *n.get_ref() as usize
            })
        };
        CircuitBreakerConfig {
            max_in_flight: limit(&s.max_in_flight, "max_in_flight"),
            max_pending: limit(&s.max_pending, "max_pending"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{errors, valid};

    const UPSTREAM: &str = "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n";

    #[test]
    fn unknown_retry_condition_is_reported_at_the_entry() {
        assert_eq!(
            errors(&format!(
                "{UPSTREAM}[upstreams.a.retry]\non = [\"reset\", \"gateway_error\"]\n"
            )),
            ["gateway.toml:4:16: unknown retry condition `gateway_error`: use \"connect_failure\", \"reset\" or \"timeout\" (statuses go in `statuses`)"]
        );
    }

    #[test]
    fn retry_timings_and_budget_are_validated() {
        assert_eq!(
            errors(&format!(
                "{UPSTREAM}[upstreams.a.retry]\nper_try_timeout = \"0s\"\nbackoff_base = \"1s\"\n\
                 backoff_max = \"100ms\"\nbudget_ratio = 1.5\n"
            )),
            [
                "gateway.toml:4:19: `per_try_timeout` must be above 0",
                "gateway.toml:6:15: `backoff_max` must not be below `backoff_base`",
                "gateway.toml:7:16: `budget_ratio` must be between 0.0 and 1.0",
            ]
        );
    }

    #[test]
    fn zero_circuit_breaker_limits_are_reported() {
        assert_eq!(
            errors(&format!(
                "{UPSTREAM}circuit_breaker = {{ max_in_flight = 0, max_pending = 0 }}\n"
            )),
            [
                "gateway.toml:3:37: `max_in_flight` must be at least 1 (leave it out for no limit)",
                "gateway.toml:3:54: `max_pending` must be at least 1 (leave it out for no limit)",
            ]
        );
    }

    #[test]
    fn retries_reach_the_model_with_attempts_capped_at_ten() {
        let built = valid(&format!(
            "{UPSTREAM}[upstreams.a.retry]\nattempts = 50\non = [\"timeout\"]\nstatuses = [\"502-503\"]\n\
             [upstreams.b]\ntargets = [\"127.0.0.1:1\"]\ncircuit_breaker = {{ max_pending = 8 }}\n"
        ));
        let [a, b] = &built.config.upstreams[..] else {
            panic!("two upstreams");
        };
        let r = &a.retry;
        assert_eq!(r.attempts, 10);
        assert_eq!(
            (r.on_connect_failure, r.on_reset, r.on_timeout),
            (false, false, true)
        );
        assert_eq!(r.statuses, [(502, 503)]);
        assert_eq!(b.retry.attempts, 2);
        assert!(b.retry.on_connect_failure && b.retry.on_reset && !b.retry.on_timeout);
        assert_eq!(b.retry.backoff_base, Duration::from_millis(25));
        assert_eq!(b.circuit_breaker.max_pending, Some(8));
        assert_eq!(b.circuit_breaker.max_in_flight, None);
    }
}
