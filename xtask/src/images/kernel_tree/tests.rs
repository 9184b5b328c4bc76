//! The build folder's bookkeeping, on a stand-in tree: a git repository whose Makefile has the
//! make targets kstorm calls on a Linux tree (`tinyconfig`, `olddefconfig`, `vmlinux`,
//! `bzImage`, all out of tree with `O=`), with one object per source file, and a log of what it
//! compiled. A real Linux build takes minutes; `bench real-bisect` and the ignored test in
//! `tests/bisect.rs` build one.

use super::*;

/// The stand-in Makefile. A source holding `FAIL` does not compile.
const MAKEFILE: &str = "\
OBJS := $(patsubst src/%.c,$(O)/%.o,$(wildcard src/*.c))
.DELETE_ON_ERROR:
.PHONY: tinyconfig olddefconfig vmlinux bzImage
tinyconfig:
\techo CONFIG_TINY=y > $(O)/.config
olddefconfig:
\tgrep -v '^CONFIG_UNMET' $(O)/.config > $(O)/.config.new; mv $(O)/.config.new $(O)/.config
vmlinux: $(O)/vmlinux
$(O)/vmlinux: $(OBJS)
\tcat $(OBJS) > $@
$(O)/%.o: src/%.c
\t! grep -q FAIL $<
\tcp $< $@
\techo $* >> $(O)/compiled.log
bzImage: $(O)/vmlinux
\tmkdir -p $(O)/arch/x86/boot
\tcp $(O)/vmlinux $(O)/arch/x86/boot/bzImage
";

struct StandIn {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    cache: PathBuf,
    fragment: PathBuf,
}

impl StandIn {
    fn new() -> StandIn {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("src")).unwrap();
        std::fs::write(tree.join("Makefile"), MAKEFILE).unwrap();
        let fragment = dir.path().join("frag.config");
        std::fs::write(&fragment, "CONFIG_KSTORM=y\n").unwrap();
        let s = StandIn {
            cache: dir.path().join("cache"),
            tree,
            fragment,
            _dir: dir,
        };
        s.git(&["init", "-q", "."]);
        s
    }

    fn git(&self, args: &[&str]) -> String {
        let who = ["-c", "user.name=t", "-c", "user.email=t@t.invalid"];
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.tree)
            .args(who)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes the sources and commits them; returns the commit.
    fn commit(&self, files: &[(&str, &str)]) -> String {
        for (name, text) in files {
            std::fs::write(self.tree.join("src").join(name), text).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", "change"]);
        self.git(&["rev-parse", "HEAD"])
    }

    fn build(&self) -> Result<BuildRecord> {
        let spec = TreeSpec {
            path: self.tree.clone(),
            base: "tinyconfig".into(),
            fragments: vec![self.fragment.clone()],
        };
        build_recorded(&spec, &self.cache).map(|(_, r)| r)
    }

    /// The objects the stand-in compiled over every build so far, sorted (make -j compiles
    /// in any order).
    fn compiled(&self, record: &BuildRecord) -> Vec<String> {
        let log = std::fs::read_to_string(record.build_dir.join("compiled.log")).unwrap();
        let mut names: Vec<String> = log.lines().map(str::to_string).collect();
        names.sort();
        names
    }
}

#[test]
fn every_commit_builds_in_one_folder_and_a_commit_seen_before_is_not_rebuilt() {
    let t = StandIn::new();
    let c1 = t.commit(&[("a.c", "a1\n"), ("b.c", "b1\n")]);
    let cold = t.build().unwrap();
    assert!(cold.built_over.is_none() && !cold.cached);
    assert_eq!(t.compiled(&cold), ["a", "b"]);
    let config = std::fs::read_to_string(cold.dir.join("config")).unwrap();
    assert!(config.contains("CONFIG_KSTORM=y"), "{config}");

    let c2 = t.commit(&[("b.c", "b2\n")]);
    let step = t.build().unwrap();
    assert_eq!(step.build_dir, cold.build_dir);
    assert_ne!(step.dir, cold.dir);
    assert_eq!(step.built_over.as_ref().unwrap().commit, c1);
    // Only what the checkout changed was compiled again.
    assert_eq!(t.compiled(&step), ["a", "b", "b"]);
    assert_eq!(
        std::fs::read_to_string(step.dir.join("vmlinux")).unwrap(),
        "a1\nb2\n"
    );

    t.git(&["checkout", "-q", &c1]);
    let again = t.build().unwrap();
    assert!(again.cached, "{}", again.how());
    assert_eq!(again.dir, cold.dir);
    assert_eq!(t.compiled(&again).len(), 3, "nothing was compiled");
    assert_eq!(
        std::fs::read_to_string(again.dir.join("vmlinux")).unwrap(),
        "a1\nb1\n"
    );
    // The kernel of c1 is whole though the folder moved on to c2 and back.
    let state = read_folder_state(&cold.build_dir).unwrap();
    assert_eq!((state.commit, state.outcome), (c2, Outcome::Finished));
}

#[test]
fn a_failed_or_cut_off_build_leaves_the_folder_usable() {
    let t = StandIn::new();
    t.commit(&[("a.c", "a1\n"), ("b.c", "b1\n")]);
    let cold = t.build().unwrap();

    let broken = t.commit(&[("b.c", "FAIL\n")]);
    let err = t.build().unwrap_err();
    assert!(
        format!("{err:#}").contains("make vmlinux bzImage failed"),
        "{err:#}"
    );
    let state = read_folder_state(&cold.build_dir).unwrap();
    assert_eq!((&state.commit, state.outcome), (&broken, Outcome::Failed));
    t.commit(&[("b.c", "b3\n")]);
    let fixed = t.build().unwrap();
    assert_eq!(fixed.built_over.as_ref().unwrap().outcome, Outcome::Failed);
    assert_eq!(t.compiled(&fixed), ["a", "b", "b"]);

    // A build cut off by SIGKILL: its state still says building, and an object it was writing
    // is half there, newer than its source.
    let mut cut = read_folder_state(&cold.build_dir).unwrap();
    cut.outcome = Outcome::Building;
    cut.started_unix = unix_now();
    write_folder_state(&cold.build_dir, &cut).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(cold.build_dir.join("a.o"), "a").unwrap();
    t.commit(&[("c.c", "c1\n")]);
    let after = t.build().unwrap();
    assert!(after.how().contains("cut off"), "{}", after.how());
    assert_eq!(t.compiled(&after), ["a", "a", "b", "b", "c"]);
    let vmlinux = std::fs::read_to_string(after.dir.join("vmlinux")).unwrap();
    assert_eq!(vmlinux, "a1\nb3\nc1\n");
}

#[test]
fn an_option_the_configuration_dropped_fails_the_build_naming_it() {
    let t = StandIn::new();
    t.commit(&[("a.c", "a1\n")]);
    std::fs::write(&t.fragment, "CONFIG_KSTORM=y\nCONFIG_UNMET_DEP=y\n").unwrap();
    let err = format!("{:#}", t.build().unwrap_err());
    assert!(
        err.contains("CONFIG_UNMET_DEP=y is gone (unmet dependencies)"),
        "{err}"
    );
}
