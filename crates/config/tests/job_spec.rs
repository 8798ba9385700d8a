//! Job specs and fleet files: what loads, and every mistake named before submission.
use std::path::{Path, PathBuf};
use volt_config::{BackendKind, ConfigError, JobSpec};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

const FLEET: &str = r#"
[[hosts]]
name = "a"
address = "127.0.0.2"
user = "volt-a"
port = 2222
identity_file = "keys/id_ed25519"

[[hosts]]
address = "127.0.0.3"
port = 2222
"#;

const SPEC: &str = r#"
name = "digits-ddp"
num_nodes = 2
workdir = "."
run = "volt fit --model digits-mlp --trainer.strategy ddp --trainer.num_nodes 2"
[env]
VOLT_LOG = "info"
[resources]
cpus = 1
[retry]
max_restarts = 3
[backend]
kind = "ssh"
hosts = "fleet.toml"
"#;

fn error(dir: &Path, spec: &str) -> String {
    let path = write(dir, "job.toml", spec);
    JobSpec::load(&path).map(|_| ()).expect_err("refused").to_string()
}

#[test]
fn the_issue_example_loads_with_its_fleet_in_toml_and_yaml() {
    let tmp = tempfile::tempdir().expect("tmp");
    write(tmp.path(), "fleet.toml", FLEET);
    let job = JobSpec::load(&write(tmp.path(), "job.toml", SPEC)).expect("spec");
    assert_eq!(job.spec.name, "digits-ddp");
    assert_eq!((job.spec.num_nodes, job.spec.retry.max_restarts), (2, 3));
    assert_eq!(job.spec.backend.kind, BackendKind::Ssh);
    assert_eq!(job.spec.env["VOLT_LOG"], "info");
    assert_eq!(job.spec.resources.cpus, Some(1.0));
    assert!(job.workdir.is_absolute() && job.workdir.is_dir(), "{:?}", job.workdir);
    let names: Vec<&str> = job.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["a", "127.0.0.3"], "an unnamed host is called by its address");
    assert_eq!((job.hosts[0].port, job.hosts[0].user.as_deref()), (Some(2222), Some("volt-a")));

    let yaml = "num_nodes: 2\nrun: echo hi\nbackend:\n  kind: ssh\n  hosts: fleet.toml\n";
    let job = JobSpec::load(&write(tmp.path(), "train.yaml", yaml)).expect("yaml");
    assert_eq!(job.spec.name, "train", "the name defaults to the file's stem");
    assert_eq!((job.spec.num_nodes, job.hosts.len()), (2, 2));
    // A local job needs no fleet; the defaults are one node, no restarts.
    let job = JobSpec::load(&write(tmp.path(), "one.toml", "run = \"true\"")).expect("local");
    assert_eq!((job.spec.num_nodes, job.spec.retry.max_restarts), (1, 0));
    // Slurm's: a partition and what each node asks for.
    let slurm = "run = \"true\"\n[resources]\ncpus = 2\nmemory = \"8GB\"\ngpus = \"H100:8\"\n\
                 [backend]\nkind = \"slurm\"\npartition = \"gpu\"\n";
    let on_slurm = JobSpec::load(&write(tmp.path(), "slurm.toml", slurm)).expect("slurm");
    assert_eq!(on_slurm.spec.backend.partition.as_deref(), Some("gpu"));
    assert_eq!(
        (on_slurm.spec.resources.memory.as_deref(), on_slurm.spec.resources.gpus.as_deref()),
        (Some("8GB"), Some("H100:8"))
    );
    assert_eq!(job.spec.backend.kind, BackendKind::Local);
}

#[test]
fn mistakes_in_a_spec_are_named_by_key_with_a_suggestion() {
    let tmp = tempfile::tempdir().expect("tmp");
    write(tmp.path(), "fleet.toml", FLEET);
    let cases = [
        ("num_node = 2\nrun = \"x\"", "`num_node`", "did you mean `num_nodes`?"),
        (
            "run = \"x\"\n[retry]\nmax_restart = 1",
            "`retry.max_restart`",
            "did you mean `retry.max_restarts`?",
        ),
        ("run = \"x\"\nnum_nodes = \"two\"", "`num_nodes`", "whole number"),
        ("run = \"x\"\nnum_nodes = 0", "`num_nodes`", "at least 1"),
        ("num_nodes = 2", "`run`", "required"),
        ("run = \"  \"", "`run`", "required"),
        ("run = \"x\"\n[backend]\nkind = \"k8s\"", "`backend.kind`", ""),
        ("run = \"x\"\n[backend]\nkind = \"ssh\"", "`backend.hosts`", "fleet file"),
        ("run = \"x\"\n[backend]\nhosts = \"fleet.toml\"", "`backend.hosts`", "local"),
        (
            "run = \"x\"\n[backend]\nkind = \"ssh\"\nhosts = \"fleet.toml\"\npartition = \"gpu\"",
            "`backend.partition`",
            "slurm",
        ),
        ("run = \"x\"\n[env]\n\"1BAD\" = \"v\"", "`env.1BAD`", "environment variable"),
        ("run = \"x\"\n[resources]\ncpus = 0", "`resources.cpus`", "more than 0"),
        ("run = \"x\"\n[resources]\nmemory = \"lots\"", "`resources.memory`", "unit K, M, G or T"),
        ("run = \"x\"\n[resources]\nmemory = \"0GB\"", "`resources.memory`", "whole number"),
        ("run = \"x\"\n[resources]\nmemory = \"8PB\"", "`resources.memory`", "unit"),
        ("run = \"x\"\n[resources]\ngpus = \"H100:0\"", "`resources.gpus`", "a type and a count"),
        ("run = \"x\"\n[resources]\ngpus = \":2\"", "`resources.gpus`", "a count"),
        ("run = \"x\"\n[resources]\ngpus = \"many\"", "`resources.gpus`", "a count"),
        ("run = \"x\"\nworkdir = \"nowhere\"", "`workdir`", "not a folder"),
        (
            "run = \"x\"\nnum_nodes = 3\n[backend]\nkind = \"ssh\"\nhosts = \"fleet.toml\"",
            "`num_nodes` = 3",
            "has 2 hosts",
        ),
        (
            "run = \"x\"\n[backend]\nkind = \"ssh\"\nhosts = \"missing.toml\"",
            "missing.toml",
            "file not found",
        ),
        ("run = \"x\"\nnum_nodes = 2\nnum_nodes = 3", "job.toml", "duplicate"),
    ];
    let mut wrong = Vec::new();
    for (spec, key, why) in cases {
        let e = error(tmp.path(), spec);
        if !e.contains(key) || !e.contains(why) {
            wrong.push(format!("{spec:?}: {e}"));
        }
    }
    assert!(wrong.is_empty(), "not named:\n{}", wrong.join("\n"));
}

#[test]
fn a_bad_fleet_file_is_named_with_what_is_wrong_in_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec = "run = \"x\"\n[backend]\nkind = \"ssh\"\nhosts = \"fleet.toml\"";
    for (fleet, why) in [
        ("", "lists no hosts"),
        ("[[hosts]]\nuser = \"u\"", "hosts[0] has no address"),
        ("[[hosts]]\naddress = \"h\"\n[[hosts]]\naddress = \"h\"", "two hosts are named \"h\""),
        (
            "[[hosts]]\naddress = \"h\"\nport = 70000",
            "`hosts[0].port` = 70000: expected a whole number from 0 to 65535",
        ),
        ("[[hosts]]\naddres = \"h\"", "did you mean `hosts[0].address`?"),
    ] {
        write(tmp.path(), "fleet.toml", fleet);
        let e = error(tmp.path(), spec);
        assert!(e.contains(why), "{fleet:?}: {e}");
        if !why.starts_with('`') && !why.starts_with("did") {
            assert!(e.contains("fleet.toml"), "names the file: {e}");
        }
    }
    let e: ConfigError = JobSpec::load(&tmp.path().join("absent.toml")).map(|_| ()).expect_err("absent");
    assert!(e.to_string().contains("absent.toml") && e.to_string().contains("file not found"), "{e}");
}
