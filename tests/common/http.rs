//! A small HTTP/1.1 server on 127.0.0.1 for the fetch tests: each route answers with a status and a body, after
//! an optional delay (a slow server); any other path is a 404.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Route {
    pub status: u16,
    pub body: Vec<u8>,
    /// Before the answer starts.
    pub delay: Duration,
}

impl Route {
    pub fn ok(body: &[u8]) -> Route {
        Route { status: 200, body: body.to_vec(), delay: Duration::ZERO }
    }
}

pub struct TestServer {
    pub port: u16,
}

impl TestServer {
    /// Serve `routes` (path -> answer) until the test process ends.
    pub fn start(routes: Vec<(&str, Route)>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the test HTTP server");
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<HashMap<String, Route>> =
            Arc::new(routes.into_iter().map(|(p, r)| (p.to_string(), r)).collect());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let routes = routes.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut request = String::new();
                    if reader.read_line(&mut request).is_err() {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let route = routes.get(&path).cloned().unwrap_or(Route {
                        status: 404,
                        body: b"not found\n".to_vec(),
                        delay: Duration::ZERO,
                    });
                    std::thread::sleep(route.delay);
                    let head = format!(
                        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        route.status,
                        if route.status == 200 { "OK" } else { "Not Found" },
                        route.body.len()
                    );
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(&route.body);
                });
            }
        });
        TestServer { port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}
