//! The HAProxy configuration snippet printed by `haproxy-config`, matching the current settings.

use crate::config::{Config, RuntimeApiAddr};

/// The frontend/backend lines a user adds to their haproxy.cfg.
pub fn snippet(c: &Config) -> String {
    let responder = if c.responder_listen.ip().is_unspecified() {
        format!(
            "127.0.0.1:{}    # the address at which HAProxy reaches haproxy-acme (RESPONDER_LISTEN {})",
            c.responder_listen.port(),
            c.responder_listen
        )
    } else {
        c.responder_listen.to_string()
    };
    let socket = match &c.haproxy_runtime_api {
        Some(RuntimeApiAddr::Unix(p)) => format!("    stats socket {} mode 600 level admin\n", p.display()),
        Some(RuntimeApiAddr::Tcp(a)) => {
            let port = a.rsplit(':').next().unwrap_or("9999");
            format!("    stats socket ipv4@0.0.0.0:{port} level admin    # reachable only by haproxy-acme\n")
        }
        None => "    # HAPROXY_RUNTIME_API is unset: files-only mode, HAProxy must be reloaded to see new files\n".into(),
    };
    let certs = c.haproxy_certs_dir.display().to_string();
    // The TLS-ALPN-01 responder: its address as HAProxy reaches it, or deploy/haproxy.cfg's
    // default while TLS_ALPN_LISTEN is unset (then no certificate may use tls-alpn-01).
    let tls_alpn = match c.tls_alpn_listen {
        Some(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        Some(a) => a.to_string(),
        None => "127.0.0.1:8403    # TLS_ALPN_LISTEN is unset: for challenge=tls-alpn-01, set it to this".into(),
    };
    format!(
        "# haproxy-acme: add to haproxy.cfg (deploy/haproxy.cfg is a complete example)\n\
         global\n{socket}\n\
         frontend fe_http\n\
         \x20   bind :80\n\
         \x20   acl is_acme path_beg /.well-known/acme-challenge/\n\
         \x20   http-request redirect scheme https code 301 unless is_acme\n\
         \x20   use_backend be_acme if is_acme\n\n\
         # :443 routes a ClientHello offering acme-tls/1 (TLS-ALPN-01) to haproxy-acme, the\n\
         # rest to fe_https with the client's address in a PROXY v2 header\n\
         frontend fe_tls\n\
         \x20   mode tcp\n\
         \x20   option tcplog\n\
         \x20   bind :443\n\
         \x20   tcp-request inspect-delay 5s\n\
         \x20   tcp-request content accept if {{ req.ssl_hello_type 1 }}\n\
         \x20   use_backend be_acme_tls if {{ req.ssl_alpn -m str acme-tls/1 }}\n\
         \x20   default_backend be_tls_hop\n\n\
         frontend fe_https\n\
         \x20   bind abns@haproxy-acme-tls accept-proxy ssl crt {certs}/\n\n\
         backend be_tls_hop\n\
         \x20   mode tcp\n\
         \x20   server fe_https abns@haproxy-acme-tls send-proxy-v2\n\n\
         backend be_acme_tls\n\
         \x20   mode tcp\n\
         \x20   server acme_tls {tls_alpn}\n\n\
         backend be_acme\n\
         \x20   server acme {responder}\n",
        certs = certs.trim_end_matches('/'),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RawSettings;
    use crate::config::Need;

    #[test]
    fn snippet_follows_the_settings() {
        let raw = RawSettings {
            domains: Some("a.com".into()),
            certs_dir: Some("/data/certs".into()),
            haproxy_certs_dir: Some("/usr/local/etc/haproxy/certs/".into()),
            haproxy_runtime_api: Some("unix:/run/haproxy/admin.sock".into()),
            responder_listen: Some("0.0.0.0:8402".into()),
            ..Default::default()
        };
        let s = snippet(&Config::from_raw(&raw, Need::Daemon).unwrap().0);
        assert!(
            s.contains(
                "bind abns@haproxy-acme-tls accept-proxy ssl crt /usr/local/etc/haproxy/certs/\n"
            ),
            "{s}"
        );
        assert!(s.contains("use_backend be_acme_tls if { req.ssl_alpn -m str acme-tls/1 }"));
        assert!(s.contains("server acme_tls 127.0.0.1:8403    # TLS_ALPN_LISTEN is unset"));
        assert!(s.contains("stats socket /run/haproxy/admin.sock mode 600 level admin"));
        assert!(s.contains("server acme 127.0.0.1:8402"));
        assert!(s.contains("use_backend be_acme if is_acme"));
    }
}
