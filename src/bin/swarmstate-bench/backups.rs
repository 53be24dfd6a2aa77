//! The backup scenario: `--backup-keys` keys of `--value-size` bytes written into one
//! namespace of a service with a backup key; a backup taken through the API (capture MB/s,
//! the service's peak RSS during it); the file uploaded to a second, empty deployment on the
//! same Redis (another key prefix) and restored there with `replace` (upload and restore MB/s,
//! peak RSS). Beside it, the same Redis' own snapshot transfer: `redis-cli --rdb` (MB/s).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{call, find, read_response, request, spawn_service_on, Args};

const KEY_HEX: &str = "0b5e55ed0b5e55ed0b5e55ed0b5e55ed0b5e55ed0b5e55ed0b5e55ed0b5e55ed";

/// Peak resident set size (VmHWM) of a process since the last reset, KiB.
fn peak_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Reset a process's peak RSS to its current RSS (Linux: `5` into clear_refs).
fn reset_peak(pid: u32) {
    if std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_err() {
        println!("      (cannot reset the peak RSS of {pid}: figures include earlier peaks)");
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Poll a backup until it is no longer running.
async fn wait_backup(addr: SocketAddr, id: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    loop {
        let (_, b) = call(
            &mut s,
            &mut buf,
            &request("GET", &format!("/v1/backups/{id}"), None),
        )
        .await;
        if b["status"] != "running" {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn backup_scenario(rport: u16, args: &Args) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let redis_url = format!("redis://127.0.0.1:{rport}");
    let env = |prefix: &'static str, d: &std::path::Path| {
        vec![
            ("SWARMSTATE_KEY_PREFIX", prefix.to_string()),
            ("SWARMSTATE_BACKUP_DIR", d.display().to_string()),
            ("SWARMSTATE_BACKUP_KEY", KEY_HEX.to_string()),
            ("SWARMSTATE_BODY_LIMIT_BYTES", "33554432".to_string()),
        ]
    };
    let a_env = env("bka", &a_dir);
    let a_env: Vec<(&str, &str)> = a_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (a, mut a_child) = spawn_service_on(&redis_url, None, &a_env).await;
    let b_env = env("bkb", &b_dir);
    let b_env: Vec<(&str, &str)> = b_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (b, mut b_child) = spawn_service_on(&redis_url, None, &b_env).await;

    // Fill: batches of 500 keys.
    let n = args.backup_keys;
    // Hex digits from a xorshift: about as compressible as real text (zstd ≈ 2:1), not a run of
    // one byte that compresses to nothing.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut value = || {
        (0..args.value_size.saturating_sub(2))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x & 15) as usize])
            })
            .collect::<String>()
    };
    let t0 = Instant::now();
    let mut s = TcpStream::connect(a).await.expect("connect");
    let mut buf = Vec::new();
    for start in (0..n).step_by(500) {
        let items: Vec<String> = (start..(start + 500).min(n))
            .map(|i| format!(r#"{{"key":"k{i:08}","value":"{}"}}"#, value()))
            .collect();
        let body = format!(r#"{{"items":[{}]}}"#, items.join(","));
        let (st, _) = call(
            &mut s,
            &mut buf,
            &request("POST", "/v1/ns/bk/batch/put", Some(&body)),
        )
        .await;
        assert_eq!(st, 200, "batch put answered {st}");
    }
    let logical = (n * args.value_size) as u64;
    println!(
        "backup: {n} keys of {} bytes ({:.1} MiB of values) written in {:.1} s",
        args.value_size,
        mib(logical),
        t0.elapsed().as_secs_f64()
    );

    // Capture.
    let a_pid = a_child.id();
    let rss_before = super::rss_kib(a_pid).unwrap_or(0);
    reset_peak(a_pid);
    let t0 = Instant::now();
    let (st, started) = call(
        &mut s,
        &mut buf,
        &request("POST", "/v1/backups", Some(r#"{"namespaces":["bk"]}"#)),
    )
    .await;
    assert_eq!(st, 202, "backup create answered {st}: {started}");
    let id = started["id"].as_str().expect("an id").to_string();
    let done = wait_backup(a, &id).await;
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(done["status"], "succeeded", "{done}");
    let size = done["size_bytes"].as_u64().unwrap_or(0);
    println!(
        "  capture: {secs:.2} s, {:.1} MiB of values/s, file {:.1} MiB ({:.1} MiB/s); service RSS {:.1} MiB before, peak {:.1} MiB during",
        mib(logical) / secs,
        mib(size),
        mib(size) / secs,
        rss_before as f64 / 1024.0,
        peak_kib(a_pid).unwrap_or(0) as f64 / 1024.0
    );

    // Upload to B (raw socket, the file in 1 MiB writes), then restore there.
    let file = a_dir.join(format!("{id}.swsbak"));
    let b_pid = b_child.id();
    let b_before = super::rss_kib(b_pid).unwrap_or(0);
    reset_peak(b_pid);
    let t0 = Instant::now();
    let mut up = TcpStream::connect(b).await.expect("connect");
    up.write_all(
        format!(
            "POST /v1/backups/upload HTTP/1.1\r\nhost: bench\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut f = tokio::fs::File::open(&file).await.expect("the backup file");
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut chunk).await.expect("read");
        if k == 0 {
            break;
        }
        up.write_all(&chunk[..k]).await.expect("upload write");
    }
    let st = read_response(&mut up, &mut buf).await.expect("upload answer");
    let up_secs = t0.elapsed().as_secs_f64();
    assert_eq!(st, 201, "upload answered {st}");
    let body = find(&buf, b"\r\n\r\n").map(|p| &buf[p + 4..]).unwrap_or(&[]);
    let uploaded: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let up_id = uploaded["id"].as_str().expect("an id").to_string();
    let t0 = Instant::now();
    let (st, summary) = call(
        &mut up,
        &mut buf,
        &request(
            "POST",
            &format!("/v1/backups/{up_id}/restore"),
            Some(r#"{"mode":"replace"}"#),
        ),
    )
    .await;
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(st, 200, "restore answered {st}: {summary}");
    assert_eq!(summary["restored"].as_u64(), Some(n as u64), "{summary}");
    println!(
        "  upload: {up_secs:.2} s ({:.1} MiB/s); restore (replace into an empty deployment): {secs:.2} s, {:.0} keys/s, {:.1} MiB of values/s; service RSS {:.1} MiB before, peak {:.1} MiB during upload and restore",
        mib(size) / up_secs,
        n as f64 / secs,
        mib(logical) / secs,
        b_before as f64 / 1024.0,
        peak_kib(b_pid).unwrap_or(0) as f64 / 1024.0
    );

    // Redis' own snapshot of the same data set (both prefixes by now), for scale.
    let rdb = dir.path().join("dump.rdb");
    let t0 = Instant::now();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &rport.to_string(), "--rdb"])
        .arg(&rdb)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let len = std::fs::metadata(&rdb).map(|m| m.len()).unwrap_or(0);
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "  redis-cli --rdb (whole Redis, both deployments): {secs:.2} s, {:.1} MiB ({:.1} MiB/s)",
                mib(len),
                mib(len) / secs
            );
        }
        _ => println!("  redis-cli not found (apt-get install -y redis-tools): no RDB comparison"),
    }
    let _ = a_child.kill();
    let _ = b_child.kill();
    let _ = a_child.wait();
    let _ = b_child.wait();
}
