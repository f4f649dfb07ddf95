//! Fuzzes the resolver every guest path goes through (`host/src/hostfns/resolver.rs`,
//! compiled in directly so this target does not build wasmtime): whatever path a guest
//! names, a resolved path lies inside the grant and under the host root, and opening it
//! cannot follow a link anywhere else. The tree holds links that point up, out, absolute,
//! relative, into loops and back into the grant.
//!
//! `cargo +nightly fuzz run resolve` (CI runs it for a short while: .ci/fuzz.sh).

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../host/src/hostfns/resolver.rs"]
#[allow(dead_code)]
mod resolver;

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    resolver: resolver::Resolver,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().canonicalize().expect("canonical root");
        for d in ["sys/granted/a/b", "sys/other", "etc", "dev"] {
            std::fs::create_dir_all(root.join(d)).expect("directory");
        }
        for f in ["sys/granted/f", "sys/granted/a/f", "sys/other/f", "etc/shadow", "dev/mem"] {
            std::fs::write(root.join(f), "x").expect("file");
        }
        let links: [(&str, &str); 12] = [
            ("sys/granted/up", "../../etc/shadow"),
            ("sys/granted/abs", "/etc/shadow"),
            ("sys/granted/inside", "/sys/granted/a"),
            ("sys/granted/a/rel", "../f"),
            ("sys/granted/a/b/deep", "../../../../../../../etc"),
            ("sys/granted/loop1", "loop2"),
            ("sys/granted/loop2", "loop1"),
            ("sys/granted/self", "."),
            ("sys/granted/root", "/"),
            ("sys/other/back", "../granted/a"),
            ("sys/link", "granted"),
            ("sys/granted/dev", "/dev/mem"),
        ];
        for (link, target) in links {
            std::os::unix::fs::symlink(target, root.join(link)).expect("link");
        }
        let resolver = resolver::Resolver::new(&root, vec![PathBuf::from("/sys/granted")]);
        Tree { _dir: dir, root, resolver }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let tree = tree();
    let granted_host = tree.root.join("sys/granted");
    for resolved in [tree.resolver.resolve(path), tree.resolver.resolve_nofollow(path)]
        .into_iter()
        .flatten()
    {
        assert!(resolved.node.starts_with("/sys/granted"), "{path:?} -> {resolved:?}");
        assert!(resolved.host.starts_with(&granted_host), "{path:?} -> {resolved:?}");
    }
    if let Ok(resolved) = tree.resolver.resolve(path) {
        if let Ok(real) = Path::new(&resolved.host).canonicalize() {
            assert_eq!(real, resolved.host, "{path:?}: the OS would follow a link");
        }
    }
});
