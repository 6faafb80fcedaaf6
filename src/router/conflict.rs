//! Finding routes that conflict (nothing orders them and one request could match both) without
//! looking at every pair: n identical routes hold n(n-1)/2 conflicting pairs, so the pairs are
//! counted per class of routes with the same filters, and only the first few are kept.

use std::collections::{BinaryHeap, HashMap};

use http::Method;

use super::HeaderMatch;

/// How many conflicting pairs are described one by one; the rest are counted.
pub const LISTED_CONFLICTS: usize = 20;

/// The filters of a route that decide whether it conflicts with another of the same pattern.
#[derive(Clone, Copy)]
pub(super) struct Filters<'a> {
    pub methods: Option<&'a [Method]>,
    pub headers: &'a [HeaderMatch],
}

impl<'a> Filters<'a> {
    /// Routes sharing a pattern are ordered by this; only routes with equal keys can conflict.
    fn tie_key(self) -> (usize, bool) {
        (self.headers.len(), self.methods.is_none())
    }

    /// The first value this route requires of header `name`, if it requires one.
    fn required_value(self, name: &http::HeaderName) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name == *name && h.value.is_some())
            .and_then(|h| h.value.as_deref())
    }
}

/// Whether some request passes both routes' method and header filters.
pub(super) fn can_both_match(a: Filters<'_>, b: Filters<'_>) -> bool {
    let methods_overlap = match (a.methods, b.methods) {
        (Some(ma), Some(mb)) => ma.iter().any(|m| mb.contains(m)),
        _ => true,
    };
    let headers_exclusive = a.headers.iter().any(|ha| {
        b.headers.iter().any(|hb| {
            ha.name == hb.name && matches!((&ha.value, &hb.value), (Some(va), Some(vb)) if va != vb)
        })
    });
    methods_overlap && !headers_exclusive
}

/// What a class of routes is keyed by: the number of header matchers (a tie-break), the sorted
/// method names, and the sorted header matchers.
type Signature<'a> = (usize, Option<Vec<&'a str>>, Vec<(&'a str, Option<&'a str>)>);

/// Routes with the same filters: they all conflict with each other, and alike with the rest.
struct Class {
    /// Positions in spec order.
    members: Vec<usize>,
}

impl Class {
    fn representative(&self) -> usize {
        self.members[0]
    }
}

/// Every conflicting pair found so far: how many, and the first ones in spec order.
#[derive(Default)]
pub(super) struct Tally {
    total: u64,
    /// The smallest `(later, earlier)` pairs seen, at most `LISTED_CONFLICTS + 1` of them (one
    /// more than listed, to name where the unlisted ones start).
    first: BinaryHeap<(usize, usize)>,
}

const KEPT: usize = LISTED_CONFLICTS + 1;

impl Tally {
    /// Adds the conflicts among `candidates`: positions (ascending) of routes sharing a host
    /// match and path pattern, whose filters `filters` gives.
    pub(super) fn add_group<'a>(
        &mut self,
        candidates: &[usize],
        filters: impl Fn(usize) -> Filters<'a>,
    ) {
        if candidates.len() < 2 {
            return;
        }
        // Classes of identical filters; the key is order-insensitive, as matching is.
        let mut classes: HashMap<Signature<'_>, Class> = HashMap::new();
        for &at in candidates {
            let f = filters(at);
            let methods = f.methods.map(|ms| {
                let mut v: Vec<&str> = ms.iter().map(Method::as_str).collect();
                v.sort_unstable();
                v.dedup();
                v
            });
            let mut headers: Vec<(&str, Option<&str>)> = f
                .headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_deref()))
                .collect();
            headers.sort_unstable();
            classes
                .entry((f.headers.len(), methods, headers))
                .or_insert_with(|| Class {
                    members: Vec::new(),
                })
                .members
                .push(at);
        }
        let mut by_tie: HashMap<(usize, bool), Vec<Class>> = HashMap::new();
        for class in classes.into_values() {
            let key = filters(class.representative()).tie_key();
            by_tie.entry(key).or_default().push(class);
        }
        for set in by_tie.into_values() {
            self.add_classes(set, &filters);
        }
    }

    /// Adds the conflicts among classes of equal tie-break key. Classes requiring one header
    /// with different values never conflict, so such a header splits the set first: a thousand
    /// routes told apart by `x-tenant` are then a thousand sets of one, not a million checks.
    fn add_classes<'a>(&mut self, set: Vec<Class>, filters: &impl Fn(usize) -> Filters<'a>) {
        let mut work = vec![set];
        while let Some(set) = work.pop() {
            match split_by_header(&set, filters) {
                Some(parts) => {
                    let count = parts.iter().max().map_or(0, |m| m + 1);
                    let mut parted: Vec<Vec<Class>> = (0..count).map(|_| Vec::new()).collect();
                    for (class, part) in set.into_iter().zip(parts) {
                        parted[part].push(class);
                    }
                    work.extend(parted);
                }
                None => self.add_pairwise(&set, filters),
            }
        }
    }

    fn add_pairwise<'a>(&mut self, set: &[Class], filters: &impl Fn(usize) -> Filters<'a>) {
        for (i, a) in set.iter().enumerate() {
            for (j, b) in set.iter().enumerate().skip(i) {
                if !can_both_match(filters(a.representative()), filters(b.representative())) {
                    continue;
                }
                let (na, nb) = (a.members.len() as u64, b.members.len() as u64);
                let pairs = if i == j {
                    na * na.saturating_sub(1) / 2
                } else {
                    na * nb
                };
                self.total = self.total.saturating_add(pairs);
                self.keep_first(&a.members, &b.members, i == j);
            }
        }
    }

    /// Offers the pairs between two classes (or within one) to the first-pairs heap, in
    /// increasing order, stopping as soon as none can be among the first. Only each class's
    /// first `KEPT` members can be: a pair with a later member has `KEPT` smaller ones.
    fn keep_first(&mut self, a: &[usize], b: &[usize], same: bool) {
        let a = &a[..a.len().min(KEPT + 1)];
        let b = &b[..b.len().min(KEPT + 1)];
        // Members of both classes in spec order, tagged with their class.
        let mut merged: Vec<(usize, bool)> = a.iter().map(|&p| (p, false)).collect();
        if !same {
            merged.extend(b.iter().map(|&p| (p, true)));
            merged.sort_unstable();
        }
        for (n, &(later, side)) in merged.iter().enumerate() {
            let partners = merged[..n]
                .iter()
                .filter(|&&(_, other)| same || other != side);
            for (k, &(earlier, _)) in partners.enumerate() {
                let pair = (later, earlier);
                if self.first.len() == KEPT && self.first.peek().is_some_and(|&max| pair >= max) {
                    if k == 0 {
                        // Every later pair starts with a larger or equal `later`.
                        return;
                    }
                    break;
                }
                self.first.push(pair);
                if self.first.len() > KEPT {
                    self.first.pop();
                }
            }
        }
    }

    /// How many conflicting pairs were found.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// The first conflicting pairs `(later, earlier)` in spec order: `LISTED_CONFLICTS` to
    /// list, and one more naming where the unlisted ones start.
    pub(super) fn first_pairs(self) -> Vec<(usize, usize)> {
        self.first.into_sorted_vec()
    }
}

/// A header every class requires with a value, and with at least two different values: the
/// index of each class's part, or `None` when no header splits the set.
fn split_by_header<'a>(
    set: &[Class],
    filters: &impl Fn(usize) -> Filters<'a>,
) -> Option<Vec<usize>> {
    if set.len() < 2 {
        return None;
    }
    let first = filters(set[0].representative());
    for header in first.headers.iter().filter(|h| h.value.is_some()) {
        let mut values: HashMap<&str, usize> = HashMap::new();
        let mut parts = Vec::with_capacity(set.len());
        for class in set {
            let Some(value) = filters(class.representative()).required_value(&header.name) else {
                break;
            };
            let next = values.len();
            parts.push(*values.entry(value).or_insert(next));
        }
        if parts.len() == set.len() && values.len() > 1 {
            return Some(parts);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn header(name: &'static str, value: Option<&str>) -> HeaderMatch {
        HeaderMatch {
            name: HeaderName::from_static(name),
            value: value.map(str::to_owned),
        }
    }

    struct Spec {
        methods: Option<Vec<Method>>,
        headers: Vec<HeaderMatch>,
    }

    fn tally(specs: &[Spec]) -> Tally {
        let mut tally = Tally::default();
        let positions: Vec<usize> = (0..specs.len()).collect();
        tally.add_group(&positions, |at| Filters {
            methods: specs[at].methods.as_deref(),
            headers: &specs[at].headers,
        });
        tally
    }

    /// The same answer the obvious way: every pair checked.
    fn brute_force(specs: &[Spec]) -> Vec<(usize, usize)> {
        let f = |at: usize| Filters {
            methods: specs[at].methods.as_deref(),
            headers: &specs[at].headers,
        };
        let mut pairs = Vec::new();
        for later in 0..specs.len() {
            for earlier in 0..later {
                if f(later).tie_key() == f(earlier).tie_key()
                    && can_both_match(f(later), f(earlier))
                {
                    pairs.push((later, earlier));
                }
            }
        }
        pairs
    }

    fn plain() -> Spec {
        Spec {
            methods: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn identical_routes_are_counted_not_enumerated() {
        let specs: Vec<Spec> = (0..10_000).map(|_| plain()).collect();
        let t = tally(&specs);
        assert_eq!(t.total(), 10_000 * 9_999 / 2);
        let first = t.first_pairs();
        assert_eq!(first.len(), KEPT);
        assert_eq!(&first[..4], [(1, 0), (2, 0), (2, 1), (3, 0)]);
        assert_eq!(first[KEPT - 1], (6, 5));
    }

    #[test]
    fn routes_told_apart_by_a_header_value_do_not_conflict() {
        let specs: Vec<Spec> = (0..5_000)
            .map(|i| Spec {
                methods: None,
                headers: vec![header("x-tenant", Some(&format!("t{i}")))],
            })
            .collect();
        let t = tally(&specs);
        assert_eq!(t.total(), 0);
        assert!(t.first_pairs().is_empty());
    }

    #[test]
    fn counts_and_first_pairs_agree_with_checking_every_pair() {
        // A mix where classes overlap partially: methods, present-only and valued headers.
        let get_post = || Some(vec![Method::GET, Method::POST]);
        let mut specs = Vec::new();
        for i in 0..60 {
            specs.push(match i % 6 {
                0 => plain(),
                1 => Spec {
                    methods: get_post(),
                    headers: Vec::new(),
                },
                2 => Spec {
                    methods: Some(vec![Method::POST]),
                    headers: Vec::new(),
                },
                3 => Spec {
                    methods: Some(vec![Method::PUT]),
                    headers: Vec::new(),
                },
                4 => Spec {
                    methods: None,
                    headers: vec![header("x-a", Some(if i % 4 == 0 { "1" } else { "2" }))],
                },
                _ => Spec {
                    methods: None,
                    headers: vec![header("x-a", None)],
                },
            });
        }
        let expected = brute_force(&specs);
        let t = tally(&specs);
        assert_eq!(t.total(), expected.len() as u64);
        assert_eq!(t.first_pairs(), expected[..KEPT]);
    }

    #[test]
    fn first_pairs_interleave_classes_in_spec_order() {
        // Two compatible classes (GET and GET+POST) whose members alternate, plus a class of one.
        let specs: Vec<Spec> = (0..30)
            .map(|i| Spec {
                methods: Some(if i % 2 == 0 {
                    vec![Method::GET]
                } else {
                    vec![Method::POST, Method::GET]
                }),
                headers: Vec::new(),
            })
            .collect();
        let expected = brute_force(&specs);
        let t = tally(&specs);
        assert_eq!(t.total(), expected.len() as u64);
        assert_eq!(t.first_pairs(), expected[..KEPT]);
    }
}
