//! The Helm chart without helm: its metadata, and values.yaml defaults that must be the
//! base's. (The templates are rendered and compared by deploy/check.sh.)

use std::collections::BTreeMap;

use deploy_tests::deploy_dir;
use deploy_tests::load;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // fields are read by serde's checks, not by the tests
struct Chart {
    api_version: String,
    name: String,
    description: String,
    #[serde(rename = "type")]
    type_: String,
    version: String,
    app_version: String,
    kube_version: String,
    #[serde(default)]
    keywords: Vec<String>,
}

fn chart_dir() -> std::path::PathBuf {
    deploy_dir().join("helm/wasm-device-plugin")
}

#[test]
fn the_chart_metadata_is_what_helm_3_and_4_read() {
    let text = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let chart: Chart = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chart.api_version, "v2");
    assert_eq!(chart.name, "wasm-device-plugin");
    assert_eq!(chart.type_, "application");
    let workspace = std::fs::read_to_string(deploy_tests::repo_dir().join("Cargo.toml")).unwrap();
    assert!(
        workspace.contains(&format!("version = \"{}\"", chart.app_version)),
        "appVersion {} is the workspace's version (the image tag)",
        chart.app_version
    );
    assert!(
        chart.kube_version.contains(load::MODELLED_API),
        "kubeVersion {} names the API the manifests are checked against ({})",
        chart.kube_version,
        load::MODELLED_API
    );
    let schema = std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap();
    let _: Value = serde_json::from_str(&schema).expect("values.schema.json is JSON");
}

#[test]
fn the_chart_defaults_are_the_bases() {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let values: BTreeMap<String, Value> =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let base = load::read_documents(&deploy_dir().join("base/daemonset.yaml"))
        .unwrap()
        .remove(0)
        .value;
    let pod = &base["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let guests_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "guests")
        .expect("the base has a guests volume");
    let pairs = [
        ("resources", &container["resources"]),
        ("affinity", &pod["affinity"]),
        ("tolerations", &pod["tolerations"]),
        ("priorityClassName", &pod["priorityClassName"]),
        (
            "podAnnotations",
            &base["spec"]["template"]["metadata"]["annotations"],
        ),
        ("updateStrategy", &base["spec"]["updateStrategy"]),
        ("guestsConfigMap", &guests_volume["configMap"]["name"]),
    ];
    for (key, expected) in pairs {
        assert_eq!(
            values.get(key),
            Some(expected),
            "values.yaml {key} must default to deploy/base's"
        );
    }
    let chart: Chart =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    let image = format!(
        "{}:{}",
        values["image"]["repository"].as_str().unwrap(),
        chart.app_version
    );
    assert_eq!(
        container["image"],
        image.as_str(),
        "the base's image is the chart's default"
    );
    assert_eq!(values["securityProfile"], "privileged");
    assert_eq!(values["sysfsWritable"], false);
}
