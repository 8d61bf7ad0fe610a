//! The keyword index through `Index`: what it finds, that it follows every change, and that
//! every way it can fall out of step with LMDB (a lost commit, one ahead of LMDB, another
//! environment's, another schema, none) is recognised at open and repaired.

use super::*;
use crate::search::{SearchDefaults, SearchOutcome};
use rag_api::{SearchMode, SearchRequest};

const DIMS: usize = 8;

fn vector(seed: u32) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIMS)
        .map(|i| ((seed as usize * 31 + i * 7) % 17) as f32 + 1.0)
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

fn doc(id: &str, texts: &[&str], heading: &str) -> DocumentUpsert {
    DocumentUpsert {
        document: DocumentRecord {
            document_id: id.into(),
            filename: format!("{id}.md"),
            content_type: "markdown".into(),
            sha256: format!("sha-{id}-{}", texts.len()),
            size_bytes: 10,
            pages: 1,
            metadata: Default::default(),
            created_at_ms: 1000,
            updated_at_ms: 1000,
            job_id: "j".into(),
            first_item: 0,
            chunks: 0,
        },
        chunks: texts
            .iter()
            .enumerate()
            .map(|(i, t)| NewChunk {
                text: t.to_string(),
                location: SourceLocation {
                    heading_path: vec![heading.to_string()],
                    ..Default::default()
                },
                vector: vector(i as u32 + id.len() as u32),
            })
            .collect(),
    }
}

const FSTAB_PT: &str = "Para montar o disco automaticamente na inicialização, edite o arquivo /etc/fstab e acrescente uma linha com o UUID da partição.";
const SSH_PT: &str = "O servidor OpenSSH lê as suas opções em sshd_config; depois de alterar o ficheiro reinicie o serviço para aplicar as configurações.";
const ERR_EN: &str = "When the importer stops with ERR-4312 the upstream archive is missing its Release file; run the update again after the mirror syncs.";
const APT_EN: &str = "The package manager installs and removes software, resolving dependencies between packages automatically.";

fn corpus(idx: &Index) {
    idx.apply_upsert(&doc("fstab", &[FSTAB_PT], "Montagem de discos"))
        .unwrap();
    idx.apply_upsert(&doc("ssh", &[SSH_PT], "Servidor SSH"))
        .unwrap();
    idx.apply_upsert(&doc("err", &[ERR_EN], "Importer errors"))
        .unwrap();
    idx.apply_upsert(&doc("apt", &[APT_EN], "Package management"))
        .unwrap();
}

fn keyword(idx: &Index, q: &str) -> Vec<String> {
    run(idx, q, SearchMode::Keyword)
        .hits
        .into_iter()
        .map(|h| h.document_id)
        .collect()
}

fn run(idx: &Index, q: &str, mode: SearchMode) -> SearchOutcome {
    let mut req = SearchRequest::new(q);
    req.mode = Some(mode);
    req.explain = true;
    crate::search::search(idx, &vector(99), &req, &SearchDefaults::default()).unwrap()
}

fn open(dir: &std::path::Path, settings: &KeywordSettings) -> Index {
    let store = Arc::new(Store::open(dir, 1 << 30).unwrap());
    Index::open(
        store,
        "test-model@000000000000",
        DIMS,
        AnnSettings::default(),
        settings,
    )
    .unwrap()
}

#[test]
fn words_stems_identifiers_and_phrases_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open_for_tests(dir.path(), DIMS, AnnSettings::default()).unwrap();
    corpus(&idx);
    // Portuguese stems and accents: "configuração" / "configurações", "partições" / "partição".
    assert_eq!(keyword(&idx, "configuração do servidor")[0], "ssh");
    assert_eq!(keyword(&idx, "particao")[0], "fstab");
    // English stems: "installing" / "installs", "package" / "packages".
    assert_eq!(keyword(&idx, "installing a package")[0], "apt");
    // Identifiers whole, in any case.
    assert_eq!(keyword(&idx, "/etc/fstab"), vec!["fstab"]);
    assert_eq!(keyword(&idx, "err-4312"), vec!["err"]);
    assert_eq!(keyword(&idx, "sshd_config"), vec!["ssh"]);
    // The heading is a field of its own.
    assert_eq!(keyword(&idx, "montagem")[0], "fstab");
    // A quoted phrase is required as a phrase; its words scattered do not match it.
    assert_eq!(keyword(&idx, "\"Release file\""), vec!["err"]);
    assert!(keyword(&idx, "\"file Release\"").is_empty());
    // Stop words alone find nothing.
    assert!(keyword(&idx, "the of and").is_empty());

    // Every hit carries its exact cosine; explain shows both rankings in hybrid mode.
    let out = run(&idx, "/etc/fstab", SearchMode::Hybrid);
    let top = &out.hits[0];
    assert_eq!(top.document_id, "fstab");
    let e = top.explain.as_ref().unwrap();
    assert_eq!(e.keyword_rank, Some(1));
    assert!(e.dense_rank.is_some());
    assert!((top.score - e.dense_score.unwrap()).abs() < 1e-6);
    // In keyword mode the cosine is computed for hits the dense ranking did not return.
    let out = run(&idx, "sshd_config", SearchMode::Keyword);
    // "ssh" has one chunk, chunk 0: its vector seed is 0 + len("ssh").
    let v = vector(3);
    let expected = crate::index::vectors::dot(&vector(99), &v);
    assert!((out.hits[0].score - expected).abs() < 1e-5);
}

#[test]
fn replacements_and_deletes_reach_the_keyword_index() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open_for_tests(dir.path(), DIMS, AnnSettings::default()).unwrap();
    corpus(&idx);
    idx.apply_upsert(&doc("fstab", &[APT_EN, APT_EN], "Package management"))
        .unwrap();
    assert!(keyword(&idx, "UUID partição").is_empty());
    assert_eq!(idx.integrity().unwrap().chunks, 5);
    idx.delete_document("err").unwrap();
    assert!(keyword(&idx, "ERR-4312").is_empty());
    assert_eq!(idx.keyword_status().chunks, 4);
    assert_eq!(idx.integrity().unwrap().chunks, 4);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every answer of the corpus' queries in keyword mode: compared before and after recovery.
fn answers(idx: &Index) -> Vec<Vec<(String, u32)>> {
    [
        "/etc/fstab",
        "configuração do servidor",
        "installing packages",
        "ERR-4312",
        "disco",
    ]
    .iter()
    .map(|q| {
        run(idx, q, SearchMode::Keyword)
            .hits
            .into_iter()
            .map(|h| (h.document_id, (h.relevance * 1e4) as u32))
            .collect()
    })
    .collect()
}

#[test]
fn a_keyword_index_out_of_step_with_lmdb_is_replayed_or_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let settings = KeywordSettings::default();
    let kw = dir.path().join("keyword");
    let saved = dir.path().join("saved");
    let want;
    {
        let idx = open(dir.path(), &settings);
        assert_eq!(
            idx.keyword_status().recovery,
            KeywordRecovery::Rebuilt("there was none".into())
        );
        idx.apply_upsert(&doc("fstab", &[FSTAB_PT], "Montagem de discos"))
            .unwrap();
        idx.apply_upsert(&doc("ssh", &[SSH_PT], "Servidor SSH"))
            .unwrap();
        idx.sync_keyword().unwrap();
        // The keyword index as it is now: restored below, it stands for a keyword commit of
        // the next document that failed (LMDB committed it, tantivy did not).
        copy_dir(&kw, &saved);
        idx.apply_upsert(&doc("err", &[ERR_EN], "Importer errors"))
            .unwrap();
        want = answers(&idx);
    }
    // 1. Behind LMDB: the document marked pending is applied again from its LMDB records.
    copy_dir(&saved, &kw);
    let idx = open(dir.path(), &settings);
    assert_eq!(idx.keyword_status().recovery, KeywordRecovery::Replayed(1));
    assert_eq!(answers(&idx), want);
    idx.integrity().unwrap();
    drop(idx);
    assert_eq!(
        open(dir.path(), &settings).keyword_status().recovery,
        KeywordRecovery::Clean
    );

    // 2. Ahead of LMDB (an older snapshot of this node restored; tantivy commits only what
    // LMDB committed): LMDB from before, keyword index from after.
    let lmdb_before = dir.path().join("lmdb-before");
    copy_dir(dir.path(), &lmdb_before);
    {
        let idx = open(dir.path(), &settings);
        idx.apply_upsert(&doc("apt", &[APT_EN], "Package management"))
            .unwrap();
    }
    std::fs::copy(lmdb_before.join("data.mdb"), dir.path().join("data.mdb")).unwrap();
    let idx = open(dir.path(), &settings);
    assert!(
        matches!(&idx.keyword_status().recovery, KeywordRecovery::Rebuilt(why) if why.contains("ahead")),
        "{:?}",
        idx.keyword_status().recovery
    );
    assert_eq!(answers(&idx), want);
    drop(idx);

    // 3. Another environment's keyword index (a snapshot of another node restored).
    let other = tempfile::tempdir().unwrap();
    {
        let o = open(other.path(), &settings);
        corpus(&o);
    }
    copy_dir(&other.path().join("keyword"), &kw);
    let idx = open(dir.path(), &settings);
    assert!(
        matches!(&idx.keyword_status().recovery, KeywordRecovery::Rebuilt(why) if why.contains("another node")),
        "{:?}",
        idx.keyword_status().recovery
    );
    assert_eq!(answers(&idx), want);
    drop(idx);

    // 4. Other languages configured: rebuilt with them.
    let english_only = KeywordSettings {
        languages: vec![Language::English],
        ..Default::default()
    };
    let idx = open(dir.path(), &english_only);
    assert!(
        matches!(&idx.keyword_status().recovery, KeywordRecovery::Rebuilt(why) if why.contains("languages")),
        "{:?}",
        idx.keyword_status().recovery
    );
    drop(idx);

    // 5. Garbage instead of an index.
    std::fs::remove_dir_all(&kw).unwrap();
    std::fs::create_dir_all(&kw).unwrap();
    std::fs::write(kw.join("meta.json"), b"{not json").unwrap();
    let idx = open(dir.path(), &settings);
    assert!(matches!(
        idx.keyword_status().recovery,
        KeywordRecovery::Rebuilt(_)
    ));
    assert_eq!(answers(&idx), want);
    idx.integrity().unwrap();
}

/// Keyword commits are synced in groups (see `Index::sync_keyword_if_due`): a machine crash
/// may lose what tantivy wrote since the last sync, or leave a file of it torn.
#[test]
fn keyword_commits_a_machine_crash_lost_are_replayed_and_torn_files_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let settings = KeywordSettings::default();
    let kw = dir.path().join("keyword");
    let synced = dir.path().join("synced");
    let want;
    {
        let idx = open(dir.path(), &settings);
        idx.apply_upsert(&doc("fstab", &[FSTAB_PT], "Montagem de discos"))
            .unwrap();
        idx.sync_keyword().unwrap();
        // What is on the disk for certain: the files as of the last sync.
        copy_dir(&kw, &synced);
        idx.apply_upsert(&doc("ssh", &[SSH_PT], "Servidor SSH"))
            .unwrap();
        idx.apply_upsert(&doc("err", &[ERR_EN], "Importer errors"))
            .unwrap();
        idx.delete_document("fstab").unwrap();
        want = answers(&idx);
        assert_eq!(want[0], vec![], "fstab is gone");
    }
    // The machine went down: LMDB's commits are durable, tantivy's since the sync are lost.
    copy_dir(&synced, &kw);
    let idx = open(dir.path(), &settings);
    // The three documents changed since the sync are still marked pending.
    assert_eq!(idx.keyword_status().recovery, KeywordRecovery::Replayed(3));
    assert_eq!(answers(&idx), want);
    idx.integrity().unwrap();
    drop(idx);

    // A segment file torn by the crash: its checksum fails at open and the index is rebuilt.
    let segment = std::fs::read_dir(&kw)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a segment's term postings file");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let idx = open(dir.path(), &settings);
    assert!(
        matches!(&idx.keyword_status().recovery, KeywordRecovery::Rebuilt(why) if why.contains("damaged")),
        "{:?}",
        idx.keyword_status().recovery
    );
    assert_eq!(answers(&idx), want);
    idx.integrity().unwrap();
}

fn open_with_interval(dir: &std::path::Path, interval: std::time::Duration) -> Index {
    open(
        dir,
        &KeywordSettings {
            commit_interval: interval,
            ..Default::default()
        },
    )
}

/// Documents applied back to back reach the keyword index in grouped commits: searchable in
/// dense mode at once, in keyword mode at the commit; a kill before it loses nothing.
#[test]
fn grouped_keyword_commits_are_searchable_at_commit_and_replayed_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let want = {
        let other = tempfile::tempdir().unwrap();
        let idx = open_for_tests(other.path(), DIMS, AnnSettings::default()).unwrap();
        corpus(&idx);
        answers(&idx)
    };
    {
        let idx = open_with_interval(dir.path(), std::time::Duration::from_secs(3600));
        let grouped = |d: DocumentUpsert| {
            idx.apply_upsert_at(&d, None, KeywordCommit::Grouped)
                .unwrap()
        };
        grouped(doc("fstab", &[FSTAB_PT], "Montagem de discos"));
        grouped(doc("ssh", &[SSH_PT], "Servidor SSH"));
        // Vectors at once; the keyword index not before its commit.
        assert!(keyword(&idx, "/etc/fstab").is_empty());
        let dense = run(&idx, "disco", SearchMode::Dense);
        assert_eq!(dense.hits.len(), 2);
        let status = idx.keyword_status();
        assert_eq!((status.chunks, status.uncommitted), (0, 2));
        // The integrity check does not count staged changes as a disagreement.
        assert_eq!(idx.integrity().unwrap().chunks, 2);
        idx.commit_keyword();
        assert_eq!(keyword(&idx, "/etc/fstab"), vec!["fstab"]);
        let status = idx.keyword_status();
        assert_eq!((status.chunks, status.uncommitted), (2, 0));

        // Staged and never committed: the process dies (tantivy's writer is dropped without
        // a commit, as by kill -9).
        grouped(doc("err", &[ERR_EN], "Importer errors"));
        grouped(doc("apt", &[APT_EN], "Package management"));
        // A replacement staged over a committed document: the old chunks' keyword hits are
        // not shown (their vectors are gone), the new ones not yet either.
        grouped(doc("ssh", &[SSH_PT], "Servidor SSH"));
        assert_eq!(idx.keyword_status().uncommitted, 3);
    }
    let idx = open_with_interval(dir.path(), std::time::Duration::from_secs(3600));
    // Every document changed since the last sync is marked pending and applied again.
    assert_eq!(idx.keyword_status().recovery, KeywordRecovery::Replayed(4));
    assert_eq!(answers(&idx), want);
    idx.integrity().unwrap();
}

/// Grouped changes are committed once the oldest is older than the interval: at the next
/// apply, or by the node's periodic `commit_keyword_if_due` when none comes; with an interval
/// of 0 every document is committed on its own.
#[test]
fn grouped_keyword_commits_happen_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let idx = open_with_interval(dir.path(), std::time::Duration::from_millis(100));
    idx.apply_upsert_at(
        &doc("fstab", &[FSTAB_PT], "Montagem de discos"),
        None,
        KeywordCommit::Grouped,
    )
    .unwrap();
    idx.commit_keyword_if_due();
    assert_eq!(idx.keyword_status().uncommitted, 1, "not due yet");
    std::thread::sleep(std::time::Duration::from_millis(150));
    // The next apply finds the oldest staged change due and commits both.
    idx.apply_upsert_at(
        &doc("ssh", &[SSH_PT], "Servidor SSH"),
        None,
        KeywordCommit::Grouped,
    )
    .unwrap();
    assert_eq!(idx.keyword_status().uncommitted, 0);
    assert_eq!(keyword(&idx, "sshd_config"), vec!["ssh"]);
    idx.apply_upsert_at(
        &doc("err", &[ERR_EN], "Importer errors"),
        None,
        KeywordCommit::Grouped,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    idx.commit_keyword_if_due();
    assert_eq!(keyword(&idx, "ERR-4312"), vec!["err"]);
    drop(idx);

    let every = tempfile::tempdir().unwrap();
    let idx = open_with_interval(every.path(), std::time::Duration::ZERO);
    idx.apply_upsert_at(
        &doc("apt", &[APT_EN], "Package management"),
        None,
        KeywordCommit::Grouped,
    )
    .unwrap();
    assert_eq!(keyword(&idx, "installing a package"), vec!["apt"]);
}
