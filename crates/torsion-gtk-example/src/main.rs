//! A GTK 4 window showing a live count of the requests served by an
//! in-process HTTP server on a local port, with a button that stops and
//! starts listening. Networking and GUI share the GTK thread: the reactor is
//! driven by glib through torsion-glib.
//!
//! ```text
//! torsion-gtk-example [--port N] [--screenshot FILE.png] [--quit-after-requests N]
//!                     [--toggle-after-requests N]
//! ```
//!
//! `--toggle-after-requests N` clicks the button twice by itself after the
//! N-th request (stop listening, then start again 500 ms later), so a test
//! can exercise it under Xvfb.
//!
//! ```text
//! ```

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use gtk::glib;
use gtk::prelude::*;
use gtk4 as gtk;
use torsion_core::{ListeningPort, Reactor};
use torsion_http::{Handler, HttpServer, Reply, Request, Response, ServerConfig};

/// Answers every request with the running count (the HTTP work is torsion-http's).
struct Counter {
    on_request: Rc<dyn Fn() -> u64>,
}

impl Handler for Counter {
    fn handle(&self, _req: Request) -> Reply {
        let n = (self.on_request)();
        Reply::Now(Response::text(format!(
            "request {n} served by torsion inside GTK\n"
        )))
    }
}

struct Options {
    port: u16,
    screenshot: Option<String>,
    quit_after: Option<u64>,
    toggle_after: Option<u64>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        port: 0,
        screenshot: None,
        quit_after: None,
        toggle_after: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--port" => o.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--screenshot" => o.screenshot = Some(value()?),
            "--quit-after-requests" => {
                o.quit_after = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--quit-after-requests: {e}"))?,
                )
            }
            "--toggle-after-requests" => {
                o.toggle_after = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--toggle-after-requests: {e}"))?,
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// Renders `widget` into a PNG (used for the README screenshot).
fn screenshot(widget: &gtk::Window, path: &str) -> Result<(), String> {
    let (w, h) = (widget.width(), widget.height());
    let paintable = gtk::WidgetPaintable::new(Some(widget));
    let snapshot = gtk::Snapshot::new();
    paintable.snapshot(&snapshot, w as f64, h as f64);
    let node = snapshot.to_node().ok_or("nothing rendered")?;
    let native = widget.native().ok_or("window not realized")?;
    let renderer = native.renderer().ok_or("no renderer")?;
    let texture = renderer.render_texture(&node, None);
    texture.save_to_png(path).map_err(|e| e.to_string())
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("torsion-gtk-example: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = gtk::init() {
        eprintln!("torsion-gtk-example: cannot start GTK: {e}");
        std::process::exit(1);
    }
    let reactor = Reactor::new().expect("reactor");
    // GTK dispatches the default main context; our loop runs it.
    let main_loop = glib::MainLoop::new(None, false);
    let _host = torsion_glib::attach(&reactor, &main_loop).expect("attach");

    let window = gtk::Window::builder()
        .title("Torsion inside GTK")
        .default_width(360)
        .default_height(140)
        .build();
    let count_label = gtk::Label::new(Some("Requests served: 0"));
    let addr_label = gtk::Label::new(None);
    let button = gtk::Button::with_label("Stop listening");
    let bx = gtk::Box::new(gtk::Orientation::Vertical, 12);
    bx.set_margin_top(18);
    bx.set_margin_bottom(18);
    bx.set_margin_start(18);
    bx.set_margin_end(18);
    bx.append(&count_label);
    bx.append(&addr_label);
    bx.append(&button);
    window.set_child(Some(&bx));

    let served = Rc::new(Cell::new(0u64));
    let on_request: Rc<dyn Fn() -> u64> = {
        let (served, label, r, win) = (
            served.clone(),
            count_label.clone(),
            reactor.clone(),
            window.clone(),
        );
        let shot = RefCell::new(opts.screenshot.clone());
        let quit_after = opts.quit_after;
        let toggle_after = opts.toggle_after;
        let button = button.clone();
        Rc::new(move || {
            let n = served.get() + 1;
            served.set(n);
            label.set_text(&format!("Requests served: {n}"));
            if let Some(path) = shot.borrow_mut().take() {
                // Let GTK lay out the new text first.
                let (win, path) = (win.clone(), path.clone());
                glib::timeout_add_local_once(std::time::Duration::from_millis(100), move || {
                    match screenshot(&win, &path) {
                        Ok(()) => println!("screenshot {path}"),
                        Err(e) => eprintln!("screenshot failed: {e}"),
                    }
                });
            }
            if toggle_after == Some(n) {
                let b = button.clone();
                glib::timeout_add_local_once(std::time::Duration::from_millis(50), move || {
                    b.emit_clicked();
                    let b2 = b.clone();
                    glib::timeout_add_local_once(
                        std::time::Duration::from_millis(500),
                        move || b2.emit_clicked(),
                    );
                });
            }
            if quit_after == Some(n) {
                let r = r.clone();
                glib::timeout_add_local_once(std::time::Duration::from_millis(300), move || {
                    let _ = r.stop();
                });
            }
            n
        })
    };

    let bind: SocketAddr = ([127, 0, 0, 1], opts.port).into();
    let port: Rc<RefCell<Option<ListeningPort>>> = Rc::default();
    let server = HttpServer::new(
        &reactor,
        Counter {
            on_request: on_request.clone(),
        },
        ServerConfig::default(),
    );
    let listen = {
        let (port, addr_label) = (port.clone(), addr_label.clone());
        Rc::new(move |at: SocketAddr| -> Result<SocketAddr, String> {
            let p = server
                .listen_tcp(at)
                .map_err(|e| format!("cannot listen on {at}: {e}"))?;
            let local = p.local_addr();
            addr_label.set_text(&format!("Listening on http://{local}/"));
            *port.borrow_mut() = Some(p);
            Ok(local)
        })
    };
    let local = match listen(bind) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("torsion-gtk-example: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {local}");

    {
        let (port, addr_label, listen) = (port.clone(), addr_label.clone(), listen.clone());
        button.connect_clicked(move |b| {
            let current = port.borrow_mut().take();
            match current {
                Some(p) => {
                    drop(p.stop_listening());
                    addr_label.set_text("Not listening");
                    b.set_label("Start listening");
                    println!("stopped listening");
                }
                None => match listen(local) {
                    Ok(a) => {
                        b.set_label("Stop listening");
                        println!("listening on {a}");
                    }
                    Err(e) => addr_label.set_text(&e),
                },
            }
        });
    }
    {
        let r = reactor.clone();
        window.connect_close_request(move |_| {
            let _ = r.stop();
            glib::Propagation::Proceed
        });
    }
    window.present();
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Err(e) = reactor.run() {
        eprintln!("torsion-gtk-example: {e}");
        std::process::exit(1);
    }
    println!("served {} requests", served.get());
}
