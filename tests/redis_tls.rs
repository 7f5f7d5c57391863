//! `rediss://` with a private CA (as Memorystore and self-managed Redis
//! need): the node trusts `RELAY_REDIS_CA_FILE`, and without it refuses the
//! unknown issuer with a one-line exit.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::WsClient;
use common::nodes::{RelayProcess, relay_binary};
use common::redis::TestRedis;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use serde_json::json;

/// Writes ca.pem, server.pem and server.key for 127.0.0.1 into a new directory.
fn make_certificates() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chat-relay-tls-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server_params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["ca.pem", "server.pem", "server.key"] {
            std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    dir
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_carries_messages_and_an_unknown_issuer_is_refused() {
    let certs = RemoveOnDrop(make_certificates());
    let redis = TestRedis::start_tls(&certs.0).await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let ca_file = certs.0.join("ca.pem");
    let node = RelayProcess::spawn(&url, "node-tls", &[("RELAY_REDIS_CA_FILE", ca_file.to_str().unwrap())]);
    let mut client = WsClient::connect_url(&node.ws_url()).await;
    client.subscribe("secure", json!({})).await;
    let ack = client.publish("secure", json!("over TLS"), None).await;
    assert_eq!(client.wait_type("message").await["id"], ack["id"]);

    let refused = std::process::Command::new(relay_binary())
        .env("REDIS_URL", &url)
        .env("RELAY_AUTH", "none")
        .env("RELAY_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "the public roots do not know this CA");
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
}
