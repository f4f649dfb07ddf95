//! The allocation answer for a class, and the faults that break it on purpose.

use crate::faults::Fault;
use crate::wdp::device_plugin::cdi;
use crate::wdp::device_plugin::types::{ContainerAllocation, DeviceSpec, Error};

/// One answer per container: its device nodes, an `<CLASS>_IDS` variable and an
/// annotation, so that tests can check every field crosses the host. CDI names come only
/// from a spec written through the host (`writeCdiSpec`).
pub fn allocate(class: &str, containers: &[Vec<String>]) -> Vec<ContainerAllocation> {
    let env_name = format!("{}_IDS", env_word(class));
    containers
        .iter()
        .map(|ids| {
            let joined = ids.join(",");
            ContainerAllocation {
                envs: vec![(env_name.clone(), joined.clone())],
                mounts: Vec::new(),
                devices: ids
                    .iter()
                    .map(|id| {
                        let path = format!("/dev/{class}/{id}");
                        DeviceSpec {
                            container_path: path.clone(),
                            host_path: path,
                            permissions: "rw".into(),
                        }
                    })
                    .collect(),
                annotations: vec![("example.com/allocated".into(), joined)],
                cdi_devices: Vec::new(),
            }
        })
        .collect()
}

/// Writes a CDI spec for the class naming every requested device's node, then puts the
/// names the host returned into the answer (the runtime needs the spec before the names).
pub fn write_cdi_spec(
    class: &str,
    containers: &[Vec<String>],
    answer: &mut [ContainerAllocation],
) -> Result<(), Error> {
    let kind = format!("example.com/{class}");
    let devices: Vec<String> = containers
        .iter()
        .flatten()
        .map(|id| {
            format!(
                r#"{{"name":"{id}","containerEdits":{{"deviceNodes":[{{"path":"/dev/{class}/{id}"}}]}}}}"#
            )
        })
        .collect();
    let spec = format!(
        r#"{{"cdiVersion":"0.6.0","kind":"{kind}","devices":[{}]}}"#,
        devices.join(",")
    );
    let written = cdi::write_spec(&spec)?;
    for (container, ids) in answer.iter_mut().zip(containers) {
        container.cdi_devices = ids
            .iter()
            .map(|id| format!("{kind}={id}"))
            .filter(|name| written.contains(name))
            .collect();
    }
    Ok(())
}

/// The class as an environment-variable word: upper case, other characters as `_`.
fn env_word(class: &str) -> String {
    class
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Breaks a correct answer the way the fault says (other faults leave it alone).
pub fn break_answer(answer: &mut Vec<ContainerAllocation>, fault: Fault) {
    let specs = answer.iter_mut().flat_map(|c| c.devices.iter_mut());
    match fault {
        Fault::BadPermissions => specs.for_each(|d| d.permissions = "rwx".into()),
        Fault::RelativePath => specs.for_each(|d| d.container_path = "dev/x".into()),
        Fault::MissingHostPath => specs.for_each(|d| d.host_path = "/dev/does-not-exist".into()),
        Fault::BadCdi => answer
            .iter_mut()
            .for_each(|c| c.cdi_devices = vec!["not-qualified".into()]),
        Fault::WrongCount => {
            answer.pop();
        }
        Fault::ForeignDevice => specs.for_each(|d| {
            d.host_path = "/dev/sda".into();
            d.container_path = "/dev/sda".into();
        }),
        Fault::Huge => answer
            .iter_mut()
            .for_each(|c| c.envs.push(("HUGE".into(), "x".repeat(5 << 20)))),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn containers() -> Vec<Vec<String>> {
        vec![vec!["w0".into(), "w1".into()], vec!["w2".into()]]
    }

    #[test]
    fn answers_every_field() {
        let answer = allocate("my-widget", &containers());
        assert_eq!(answer.len(), 2);
        let first = &answer[0];
        assert_eq!(
            first.envs,
            [("MY_WIDGET_IDS".to_string(), "w0,w1".to_string())]
        );
        assert_eq!(first.devices[1].host_path, "/dev/my-widget/w1");
        assert_eq!(first.devices[1].container_path, "/dev/my-widget/w1");
        assert_eq!(
            first.annotations,
            [("example.com/allocated".to_string(), "w0,w1".to_string())]
        );
        assert!(
            first.cdi_devices.is_empty(),
            "names come from a written spec"
        );
    }

    #[test]
    fn faults_break_the_answer() {
        let mut answer = allocate("widget", &containers());
        break_answer(&mut answer, Fault::WrongCount);
        assert_eq!(answer.len(), 1);
        let mut answer = allocate("widget", &containers());
        break_answer(&mut answer, Fault::RelativePath);
        assert_eq!(answer[1].devices[0].container_path, "dev/x");
        let mut answer = allocate("widget", &containers());
        answer[0].cdi_devices = vec!["example.com/widget=w0".into()];
        break_answer(&mut answer, Fault::BadCdi);
        assert_eq!(answer[0].cdi_devices, ["not-qualified"]);
    }
}
