//! The preferred allocation for exclusive pools: pack a container's devices as close
//! together as the available ones allow, within one NUMA node and, inside it, under one
//! PCIe switch (GPUDirect RDMA and multi-rail collectives run fastest between devices that
//! share a switch).
//!
//! Each device has a *location*: its NUMA node, then the components of its canonical
//! sysfs path (`/sys/devices/pci0000:15/0000:15:01.0/0000:16:00.0/...`), then its port.
//! Devices whose locations share a longer prefix are closer: same root complex, same
//! switch, same adapter, same HCA.

use wdp_guest_sdk::types::PreferredRequest;

/// A device's location, from the farthest grouping to the nearest.
pub type Location = Vec<String>;

/// `must-include` first, then `size` minus that many more of `available`, chosen from
/// the tightest group that holds them all. `locate` gives a device's location; devices it
/// does not know come last, each a group of its own.
pub fn preferred(
    request: &PreferredRequest,
    locate: impl Fn(&str) -> Option<Location>,
) -> Vec<String> {
    let size = usize::try_from(request.size).unwrap_or(usize::MAX);
    let mut answer: Vec<String> = Vec::new();
    for id in &request.must_include {
        if !answer.contains(id) {
            answer.push(id.clone());
        }
    }
    let Some(need) = size.checked_sub(answer.len()).filter(|n| *n > 0) else {
        return answer;
    };
    let place = |id: &str| locate(id).unwrap_or_else(|| vec!["~unknown".into(), id.to_string()]);
    let must: Vec<Location> = answer.iter().map(|id| place(id)).collect();
    let mut candidates: Vec<(Location, &String)> = Vec::new();
    for id in &request.available {
        if !answer.contains(id) && !candidates.iter().any(|(_, c)| *c == id) {
            candidates.push((place(id), id));
        }
    }
    candidates.sort_unstable();
    if candidates.len() <= need {
        answer.extend(candidates.into_iter().map(|(_, id)| id.clone()));
        return answer;
    }
    let prefix = tightest_group(&candidates, &must, need);
    let group: Vec<&(Location, &String)> = candidates
        .iter()
        .filter(|(loc, _)| loc.starts_with(&prefix))
        .collect();
    fill(&group, prefix.len(), need, &must, &mut answer);
    answer
}

/// The longest location prefix that holds every must-include device and at least `need`
/// candidates; among equally long ones, the one with the fewest candidates (best fit,
/// leaving bigger groups to bigger requests), then the first.
fn tightest_group(candidates: &[(Location, &String)], must: &[Location], need: usize) -> Location {
    // Sorted locations put every group of a given prefix length in one contiguous run.
    let longest = candidates
        .iter()
        .map(|(loc, _)| loc.len())
        .max()
        .unwrap_or(0);
    let mut best: (&[String], usize) = (&[], candidates.len());
    for len in 1..=longest {
        let mut i = 0;
        while i < candidates.len() {
            let Some(prefix) = candidates[i].0.get(..len) else {
                i += 1;
                continue;
            };
            let end = i + candidates[i..]
                .iter()
                .take_while(|(loc, _)| loc.starts_with(prefix))
                .count();
            let count = end - i;
            let holds = count >= need && must.iter().all(|m| m.starts_with(prefix));
            // Longer wins; at equal length the smaller (then the first) group.
            if holds && (len > best.0.len() || count < best.1) {
                best = (prefix, count);
            }
            i = end;
        }
    }
    best.0.to_vec()
}

/// Takes `need` of `items` (sorted, all sharing their first `depth` location components)
/// into `answer`: the child group closest to the must-include devices first, then the
/// smallest child that holds the rest, else the largest, recursively.
fn fill(
    items: &[&(Location, &String)],
    depth: usize,
    need: usize,
    must: &[Location],
    answer: &mut Vec<String>,
) {
    if items.len() <= need {
        answer.extend(items.iter().map(|(_, id)| (*id).clone()));
        return;
    }
    // Runs of equal component `depth` (a location that ends here is a group of its own).
    let mut children: Vec<&[&(Location, &String)]> = Vec::new();
    let mut start = 0;
    for i in 1..=items.len() {
        let boundary = i == items.len() || {
            let (a, b) = (&items[i - 1].0, &items[i].0);
            a.get(depth).is_none() || a.get(depth) != b.get(depth)
        };
        if boundary {
            children.push(&items[start..i]);
            start = i;
        }
    }
    // How close a child comes to the must-include devices: the longest location prefix
    // one of its devices shares with one of them.
    let near_must = |child: &[&(Location, &String)]| {
        child
            .iter()
            .flat_map(|(loc, _)| must.iter().map(move |m| common(loc, m)))
            .max()
            .unwrap_or(0)
    };
    let mut left = need;
    while left > 0 && !children.is_empty() {
        let best = (0..children.len()).min_by_key(|&i| {
            let c = children[i];
            let fits = c.len() >= left;
            (
                std::cmp::Reverse(near_must(c)),
                !fits,
                if fits { c.len() } else { usize::MAX - c.len() },
                i,
            )
        });
        let Some(best) = best else { break };
        let child = children.remove(best);
        let take = left.min(child.len());
        fill(child, depth + 1, take, must, answer);
        left -= take;
    }
}

/// How many leading components two locations share.
fn common(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two NUMA nodes; on node 0 a dual-function adapter (a0, a1) behind switch s1 next to
    /// x (another switch), and y on its own root complex; on node 1, p and q.
    fn locate(id: &str) -> Option<Location> {
        let path = match id {
            "a0" => "0 pci0 s1 dev 0",
            "a1" => "0 pci0 s1 dev 1",
            "x" => "0 pci0 s2 x",
            "y" => "0 pci1 y",
            "z" => "0 pci4 z",
            "p" => "1 pci2 p",
            "q" => "1 pci3 q",
            _ => return None,
        };
        Some(path.split(' ').map(String::from).collect())
    }

    fn ask(available: &[&str], must: &[&str], size: u32) -> Vec<String> {
        let request = PreferredRequest {
            available: available.iter().map(|s| s.to_string()).collect(),
            must_include: must.iter().map(|s| s.to_string()).collect(),
            size,
        };
        let mut answer = preferred(&request, locate);
        answer[must.len()..].sort();
        answer
    }

    const ALL: [&str; 6] = ["p", "q", "x", "y", "a1", "a0"];

    #[test]
    fn pairs_go_to_the_closest_pair() {
        assert_eq!(ask(&ALL, &[], 2), ["a0", "a1"]);
        assert_eq!(ask(&ALL, &["x"], 2), ["x", "a0"]);
        assert_eq!(ask(&ALL, &["p"], 2), ["p", "q"]);
        assert_eq!(ask(&ALL, &["a1"], 2), ["a1", "a0"]);
    }

    #[test]
    fn larger_requests_stay_on_one_numa_node_when_they_fit() {
        assert_eq!(ask(&ALL, &[], 3), ["a0", "a1", "x"]);
        assert_eq!(ask(&ALL, &[], 4), ["a0", "a1", "x", "y"]);
        let mut five = ask(&ALL, &[], 5);
        five.sort();
        assert_eq!(five, ["a0", "a1", "p", "x", "y"]);
    }

    #[test]
    fn best_fit_leaves_the_bigger_group_whole() {
        // Node 1 holds exactly two; node 0 holds three, none closer: a pair goes to node 1.
        assert_eq!(ask(&["p", "q", "x", "y", "z"], &[], 2), ["p", "q"]);
        // Equally good groups: the first.
        assert_eq!(ask(&["p", "q", "y", "z"], &[], 2), ["y", "z"]);
    }

    #[test]
    fn must_include_is_kept_even_across_nodes() {
        assert_eq!(ask(&ALL, &["p", "a0"], 3), ["p", "a0", "a1"]);
        assert_eq!(ask(&ALL, &["p", "a0"], 2), ["p", "a0"]);
        assert_eq!(ask(&ALL, &["q"], 1), ["q"]);
    }

    #[test]
    fn unknown_devices_come_last_and_sizes_are_capped() {
        assert_eq!(ask(&["zz", "y"], &[], 1), ["y"]);
        let mut all = ask(&["zz", "y", "p"], &[], 9);
        all.sort();
        assert_eq!(all, ["p", "y", "zz"]);
        assert!(ask(&ALL, &[], 0).is_empty());
    }
}
