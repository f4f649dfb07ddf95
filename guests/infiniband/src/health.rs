//! Link health of one port, from the ib core's `state` and `phys_state` attributes
//! (`"4: ACTIVE"`, `"5: LinkUp"`): traffic flows only when the logical state is ACTIVE
//! (the subnet manager, or RoCE's link, brought it up) and the physical link is up.

/// `state` value of a port that passes traffic (`IB_PORT_ACTIVE`).
const ACTIVE: u32 = 4;
/// `phys_state` value of a trained physical link (`IB_PORT_PHYS_STATE_LINK_UP`).
const LINK_UP: u32 = 5;

/// The number before the colon (`"4: ACTIVE\n"` → 4); none for anything else.
pub fn code(text: &str) -> Option<u32> {
    let (number, _) = text.split_once(':')?;
    number.trim().parse().ok()
}

/// Why a port with these attribute texts cannot carry traffic; none when it can.
pub fn port_problem(state: &str, phys_state: &str) -> Option<String> {
    if code(state) == Some(ACTIVE) && code(phys_state) == Some(LINK_UP) {
        None
    } else {
        Some(format!(
            "link is not up (state `{}`, phys_state `{}`; needs `4: ACTIVE` and `5: LinkUp`)",
            state.trim(),
            phys_state.trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_and_link_up_is_healthy() {
        assert_eq!(port_problem("4: ACTIVE\n", "5: LinkUp\n"), None);
    }

    #[test]
    fn anything_else_is_a_problem() {
        for (state, phys) in [
            ("1: DOWN\n", "2: Polling\n"),
            ("2: INIT\n", "5: LinkUp\n"),
            ("3: ARMED\n", "5: LinkUp\n"),
            ("4: ACTIVE\n", "6: LinkErrorRecovery\n"),
            ("5: ACTIVE_DEFER\n", "5: LinkUp\n"),
            ("ACTIVE\n", "LinkUp\n"),
            ("", ""),
        ] {
            let problem = port_problem(state, phys);
            assert!(problem.is_some(), "{state:?} {phys:?}");
        }
        let m = port_problem("1: DOWN\n", "3: Disabled\n").unwrap();
        assert!(
            m.contains("`1: DOWN`") && m.contains("`3: Disabled`"),
            "{m}"
        );
    }

    #[test]
    fn codes() {
        assert_eq!(code("4: ACTIVE"), Some(4));
        assert_eq!(code(" 5: LinkUp\n"), Some(5));
        assert_eq!(code("x: y"), None);
        assert_eq!(code("4"), None);
    }
}
