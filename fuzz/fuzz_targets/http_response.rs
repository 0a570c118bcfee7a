//! An HTTP response as the probe reads it from a site (or a blockpage injector): the bytes
//! are the server's side of a connection, and the probe's real GET runs against them.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use witness_core::checks::{http, MeasureConfig};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let url = url::Url::parse("http://example.com/").expect("url");
    let addr = SocketAddr::from(([192, 0, 2, 1], 80));
    let cfg = MeasureConfig::default();
    let own = witness_core::scrub::OwnAddresses::default();
    runtime().block_on(async {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let response = data.to_vec();
        let serve = async move {
            let _ = server.write_all(&response).await;
            let _ = server.shutdown().await;
            // Keep reading the request so the client never blocks on a full pipe.
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut server, &mut sink).await;
        };
        let get = http::get(client, &url, addr, 0, &cfg, &own, Instant::now());
        let (exchange, ()) = tokio::join!(get, serve);
        let _ = http::extract_title(&exchange.body);
    });
});
