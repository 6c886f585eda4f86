//! Which final reply goes upstream when every branch has one and none is a
//! 2xx (RFC 3261 §16.7 step 6, as Kamailio's `t_pick_branch` orders them).

/// A branch's final, as the selection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Final {
    /// The code: received, or made up here (408 timeout, 503 connection failure).
    pub(crate) code: u16,
    /// Whether it may be picked (a branch that never went out may not).
    pub(crate) eligible: bool,
}

/// Lower is better. 6xx ends the search ahead of every other class; then
/// the lowest class; within 4xx the codes an upstream client can act on
/// (401, 407, 415, 420, 484) come first; ties go to the lowest branch.
pub(crate) fn priority(code: u16) -> u32 {
    let xx = (code % 100) as u32;
    match code {
        200..=299 => xx,
        600..=699 => 1000 + xx,
        300..=399 => 3000 + xx,
        401 | 407 | 415 | 420 | 484 => 4000 + xx,
        400..=499 => 4100 + xx,
        500..=599 => 5000 + xx,
        _ => 10_000 + code as u32,
    }
}

/// The branch whose final goes upstream, if any may be picked.
pub(crate) fn pick(finals: impl IntoIterator<Item = Final>) -> Option<usize> {
    finals
        .into_iter()
        .enumerate()
        .filter(|(_, f)| f.eligible && f.code >= 300)
        .min_by_key(|(i, f)| (priority(f.code), *i))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(code: u16) -> Final {
        Final {
            code,
            eligible: true,
        }
    }

    #[test]
    fn classes_in_kamailios_order() {
        assert_eq!(pick([f(486), f(603)]), Some(1), "6xx wins");
        assert_eq!(pick([f(503), f(404)]), Some(1), "4xx before 5xx");
        assert_eq!(pick([f(404), f(302)]), Some(1), "3xx before 4xx");
        assert_eq!(pick([f(404), f(401)]), Some(1), "401 before other 4xx");
        assert_eq!(pick([f(407), f(401)]), Some(1), "401 before 407");
        assert_eq!(pick([f(486), f(486)]), Some(0), "ties: lowest branch");
        assert_eq!(
            pick([f(408), f(480)]),
            Some(0),
            "a timeout is a 4xx like others"
        );
    }

    #[test]
    fn ineligible_branches_are_never_picked() {
        let lost = Final {
            code: 408,
            eligible: false,
        };
        assert_eq!(pick([lost, f(500)]), Some(1));
        assert_eq!(pick([lost]), None);
        assert_eq!(pick(std::iter::empty()), None);
    }
}
