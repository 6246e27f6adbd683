//! The `torsion` command: Torsion's servers from the command line.
//!
//! ```text
//! torsion web --listen tcp:8080 --path ./public
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use torsion_core::Reactor;
use torsion_http::{File, HttpServer, ServerConfig, Site};

#[derive(Parser, Debug)]
#[command(
    name = "torsion",
    version,
    about = "Event-driven network servers in the spirit of Twisted"
)]
struct Cli {
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a directory over HTTP.
    Web(WebArgs),
}

#[derive(clap::Args, Debug)]
struct WebArgs {
    /// Endpoint to listen on, e.g. `tcp:8080` or `tcp:8080:interface=127.0.0.1`; repeatable.
    #[arg(long = "listen", value_name = "ENDPOINT", default_value = "tcp:8080")]
    listen: Vec<String>,
    /// Directory (or file) to serve.
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
    /// Index file name tried for directories; repeatable (default: index.html, index.htm).
    #[arg(long = "index", value_name = "NAME")]
    index: Vec<String>,
    /// Extra response header, `Name: value`; repeatable.
    #[arg(long = "add-header", value_name = "HEADER")]
    add_header: Vec<String>,
    /// Content type for an extension, `ext=type` (e.g. `log=text/plain`); repeatable.
    #[arg(long = "mime-type", value_name = "EXT=TYPE")]
    mime_type: Vec<String>,
    /// Answer 403 for directories without an index file instead of listing them.
    #[arg(long)]
    no_listing: bool,
    /// Compress text files with gzip for clients that accept it.
    #[arg(long)]
    gzip: bool,
    /// Serve and list hidden files and directories (names starting with a
    /// dot, such as `.git`); by default they answer 404 (`.well-known` is
    /// always served).
    #[arg(long)]
    hidden: bool,
    /// Seconds allowed for a request head to arrive (slowloris defence).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds an idle keep-alive connection is kept.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    idle_timeout: f64,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Web(args) => web(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("torsion: error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn seconds(what: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!(
            "{what} must be a positive number of seconds, not {v}"
        ))
    }
}

fn web(args: WebArgs) -> Result<(), String> {
    // Every endpoint form the facade knows: tcp:, tcp6:, unix:, systemd:, ssl:.
    let endpoints = args
        .listen
        .iter()
        .map(|e| {
            torsion::endpoints::server_from_string(e)
                .map_err(|err| format!("--listen {e:?}: {err}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut files =
        File::new(&args.path).map_err(|e| format!("--path {}: {e}", args.path.display()))?;
    if !args.index.is_empty() {
        files.set_index_names(args.index.clone());
    }
    files.set_directory_listing(!args.no_listing);
    files.set_gzip(args.gzip);
    files.set_serve_hidden(args.hidden);
    for m in &args.mime_type {
        let (ext, ty) = m
            .split_once('=')
            .filter(|(e, t)| !e.is_empty() && !t.is_empty())
            .ok_or_else(|| format!("--mime-type {m:?}: expected EXT=TYPE"))?;
        http::HeaderValue::from_str(ty).map_err(|_| format!("--mime-type {m:?}: invalid type"))?;
        files.set_mime_type(ext, ty);
    }
    let site = Site::new(Rc::new(files));
    for h in &args.add_header {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--add-header {h:?}: expected 'Name: value'"))?;
        site.add_header(name.trim(), value.trim())
            .map_err(|e| format!("--add-header {h:?}: {e}"))?;
    }
    let cfg = ServerConfig {
        header_timeout: seconds("--header-timeout", args.header_timeout)?,
        idle_timeout: seconds("--idle-timeout", args.idle_timeout)?,
        ..ServerConfig::default()
    };
    let reactor = Reactor::new().map_err(|e| format!("cannot create reactor: {e}"))?;
    let server = HttpServer::new(&reactor, site, cfg);
    let root = std::fs::canonicalize(&args.path).unwrap_or(args.path.clone());
    for (spec, ep) in args.listen.iter().zip(endpoints) {
        // The server keeps its ports: on Ctrl-C it closes them first, so
        // new connections are refused while responses in flight finish.
        let at = server
            .listen(&ep)
            .map_err(|e| format!("cannot listen on {spec}: {e}"))?;
        let scheme = if spec.starts_with("ssl:") {
            "https"
        } else {
            "http"
        };
        let shown = match at {
            torsion::Address::Tcp(a) => format!("{scheme}://{a}/"),
            other => format!("{other} ({scheme})"),
        };
        println!("torsion web: serving {} on {shown}", root.display());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.stop_gracefully_on_shutdown();
    reactor
        .install_signal_handlers()
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    reactor.run().map_err(|e| format!("reactor failed: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}
