//! The preferred-allocation answer: required IDs first, then the closest by NUMA node.

use crate::faults::Fault;
use crate::wdp::device_plugin::types::PreferredRequest;

/// `must-include` first, then the rest of `available` by NUMA node (unknown last) and ID,
/// cut to `size`. `numa_node` looks up one device's node.
pub fn preferred(
    request: &PreferredRequest,
    numa_node: impl Fn(&str) -> Option<u32>,
) -> Vec<String> {
    let mut answer: Vec<String> = Vec::new();
    for id in &request.must_include {
        if !answer.contains(id) {
            answer.push(id.clone());
        }
    }
    let mut rest: Vec<(Option<u32>, &String)> = request
        .available
        .iter()
        .filter(|id| !answer.contains(id))
        .map(|id| (numa_node(id), id))
        .collect();
    // Unknown NUMA nodes (`is_none`) sort after every known one.
    rest.sort_by_key(|(numa, id)| (numa.is_none(), *numa, *id));
    rest.dedup_by(|a, b| a.1 == b.1);
    answer.extend(rest.into_iter().map(|(_, id)| id.clone()));
    answer.truncate(usize::try_from(request.size).unwrap_or(usize::MAX));
    answer
}

/// Breaks a correct answer the way the fault says (other faults leave it alone).
pub fn break_answer(answer: &mut Vec<String>, request: &PreferredRequest, fault: Fault) {
    match fault {
        Fault::Outside => {
            let mut outsider = String::from("not-available");
            while request.available.contains(&outsider) {
                outsider.push('!');
            }
            match answer.last_mut() {
                Some(last) => *last = outsider,
                None => answer.push(outsider),
            }
        }
        // One fewer, or one more when there is nothing to take away.
        Fault::WrongSize => {
            let removed = answer.pop();
            if removed.is_none() {
                answer.extend(request.available.first().cloned());
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(available: &[&str], must_include: &[&str], size: u32) -> PreferredRequest {
        PreferredRequest {
            available: available.iter().map(|s| s.to_string()).collect(),
            must_include: must_include.iter().map(|s| s.to_string()).collect(),
            size,
        }
    }

    fn numa(id: &str) -> Option<u32> {
        match id {
            "a" | "d" => Some(1),
            "b" | "c" => Some(0),
            _ => None,
        }
    }

    #[test]
    fn must_include_first_then_numa_then_id() {
        let req = request(&["a", "b", "c", "d", "x"], &["d"], 4);
        assert_eq!(preferred(&req, numa), ["d", "b", "c", "a"]);
        let req = request(&["x", "a", "b"], &[], 3);
        assert_eq!(preferred(&req, numa), ["b", "a", "x"]);
    }

    #[test]
    fn faults_break_the_answer() {
        let req = request(&["a", "b"], &[], 2);
        let mut answer = preferred(&req, numa);
        break_answer(&mut answer, &req, Fault::Outside);
        assert!(answer.iter().any(|id| !req.available.contains(id)));
        let mut answer = preferred(&req, numa);
        break_answer(&mut answer, &req, Fault::WrongSize);
        assert_eq!(answer.len(), 1);
    }
}
