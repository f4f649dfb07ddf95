//! Fuzzes the resolver every guest path goes through (`host/src/host_root/resolver.rs` and
//! the `node_file.rs` it opens nodes as, compiled in directly so this target does not
//! build wasmtime): whatever path a guest names, a resolved path lies inside the grant and
//! under the host root, opening it cannot follow a link anywhere else, and the kernel's
//! `openat2` and the fallback walk agree. The tree holds links that point up, out,
//! absolute, relative, into loops and back into the grant.
//!
//! `cargo +nightly fuzz run resolve` (CI runs it for a short while: .ci/fuzz.sh).

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../host/src/host_root/resolver.rs"]
#[allow(dead_code)]
mod resolver;

#[path = "../../host/src/host_root/node_file.rs"]
#[allow(dead_code)]
mod node_file;

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    resolver: resolver::Resolver,
    /// The same, as a kernel without `openat2` runs it.
    walk: resolver::Resolver,
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
        let walk = resolver.clone().force_fallback();
        Tree { _dir: dir, root, resolver, walk }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let tree = tree();
    let granted_host = tree.root.join("sys/granted");
    let kernel = [tree.resolver.resolve(path), tree.resolver.resolve_nofollow(path)];
    let walked = [tree.walk.resolve(path), tree.walk.resolve_nofollow(path)];
    for (kernel, walked) in kernel.iter().zip(&walked) {
        match (kernel, walked) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{path:?}"),
            (Err(a), Err(b)) => assert_eq!(
                std::mem::discriminant(a),
                std::mem::discriminant(b),
                "{path:?}: openat2 {a} / walk {b}"
            ),
            _ => panic!("{path:?}: openat2 {kernel:?} / walk {walked:?}"),
        }
    }
    for resolved in kernel.into_iter().chain(walked).flatten() {
        assert!(resolved.node.starts_with("/sys/granted"), "{path:?} -> {resolved:?}");
        assert!(resolved.host.starts_with(&granted_host), "{path:?} -> {resolved:?}");
    }
    if let Ok(resolved) = tree.resolver.resolve(path) {
        if let Ok(real) = Path::new(&resolved.host).canonicalize() {
            assert_eq!(real, resolved.host, "{path:?}: the OS would follow a link");
        }
    }
});
