//! Live control over OSC (Open Sound Control, UDP): `--osc 127.0.0.1:9000` starts a
//! listener thread that decodes each packet (`rosc`), turns each message into a
//! [`Command`] and sends it to the window over a bounded channel; the window carries the
//! commands out in one place each frame ([`super::ViewerApp::run_osc_commands`]), as it
//! does its buttons'. A message asks for a repaint, so it acts at once on an idle window.
//!
//! The addresses (indices count from 0):
//!
//! | address | arguments | what it does |
//! |---|---|---|
//! | `/dreamwalk/play` | none, or a number | plays; with 0, pauses (a toggle button) |
//! | `/dreamwalk/pause` | any | pauses |
//! | `/dreamwalk/position` | number 0..1 | jumps to that place along the walk: 0 the first keyframe, 1 the last (the first again on an endless loop) |
//! | `/dreamwalk/speed` | number | steps between keyframes, 1 to 240: fewer is faster |
//! | `/dreamwalk/seed` | whole number ≥ 0 | the keyframes' seed |
//! | `/dreamwalk/keyframe/N/prompt` | string | keyframe N's prompt (a mix too) |
//! | `/dreamwalk/keyframe/N/weight/M` | number | the weight of part M of keyframe N's mix |
//!
//! Numbers may be int, long, float or double. A packet that does not decode is counted as
//! malformed, a message with an unknown address or unusable arguments as ignored; both
//! are otherwise dropped, and the window shows the counts. Values the walk cannot run (a
//! negative weight) are refused by [`crate::pipeline::Settings::validate`] like typed
//! ones: a notice, and the walk plays on.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;
use rosc::{OscMessage, OscPacket, OscType};

use super::command::Command;
use super::controls::MAX_STEPS_BETWEEN;

/// The prefix of every address dreamwalk answers.
pub const OSC_PREFIX: &str = "/dreamwalk/";

/// Commands waiting for the window; past this the listener waits (the socket's own
/// buffer then holds what comes).
const QUEUE: usize = 256;

/// Why the listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OscError {
    /// The address could not be bound (a port in use says so, and what to do).
    #[error("cannot listen for OSC on {address}: {reason}")]
    Bind { address: SocketAddr, reason: String },
}

/// What the listener has seen, for the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OscStats {
    /// Where it listens.
    pub address: Option<SocketAddr>,
    /// Messages turned into commands.
    pub applied: u64,
    /// Packets that did not decode as OSC.
    pub malformed: u64,
    /// Messages with an unknown address, unusable arguments, or no such keyframe or part.
    pub ignored: u64,
    /// Why the last packet or message was dropped.
    pub last_problem: Option<String>,
}

impl OscStats {
    /// "OSC 127.0.0.1:9000 · 12 messages · 1 malformed · 2 ignored", for the HUD.
    pub fn line(&self) -> String {
        let address = self.address.map(|a| a.to_string()).unwrap_or_default();
        format!(
            "OSC {address} · {} messages · {} malformed · {} ignored",
            self.applied, self.malformed, self.ignored
        )
    }

    /// Packets and messages dropped so far.
    pub fn dropped(&self) -> u64 {
        self.malformed + self.ignored
    }
}

/// The counters the thread and the window share.
#[derive(Default)]
struct Counts {
    applied: AtomicU64,
    malformed: AtomicU64,
    ignored: AtomicU64,
    last_problem: Mutex<Option<String>>,
}

/// A running listener. Dropping it stops and joins its thread.
pub struct OscListener {
    address: SocketAddr,
    commands: Receiver<Command>,
    counts: Arc<Counts>,
    /// The window's context, to wake it when a message arrives.
    repaint: Arc<Mutex<Option<egui::Context>>>,
    /// Dropped to stop the thread (with a datagram to wake it from `recv`).
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OscListener {
    /// Binds `address` and starts listening; a port in use (or any address that cannot be
    /// bound) is an error naming it, before anything else starts.
    pub fn bind(address: SocketAddr) -> Result<Self, OscError> {
        let socket = UdpSocket::bind(address).map_err(|e| OscError::Bind {
            address,
            reason: if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "{e}: another program (or another dreamwalk) has that port; choose \
                     another with --osc"
                )
            } else {
                e.to_string()
            },
        })?;
        let bound = socket.local_addr().map_err(|e| OscError::Bind {
            address,
            reason: e.to_string(),
        })?;
        let (command_tx, commands) = bounded(QUEUE);
        let (stop, stop_rx) = bounded::<()>(0);
        let counts = Arc::new(Counts::default());
        let repaint = Arc::new(Mutex::new(None));
        let thread = {
            let (counts, repaint) = (counts.clone(), repaint.clone());
            std::thread::Builder::new()
                .name("osc".into())
                .spawn(move || listen(&socket, &command_tx, &stop_rx, &counts, &repaint))
                .map_err(|e| OscError::Bind {
                    address,
                    reason: format!("cannot start the listener thread: {e}"),
                })?
        };
        tracing::info!("listening for OSC on {bound}");
        Ok(Self {
            address: bound,
            commands,
            counts,
            repaint,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port chosen when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// The counts so far.
    pub fn stats(&self) -> OscStats {
        OscStats {
            address: Some(self.address),
            applied: self.counts.applied.load(Ordering::SeqCst),
            malformed: self.counts.malformed.load(Ordering::SeqCst),
            ignored: self.counts.ignored.load(Ordering::SeqCst),
            last_problem: self.counts.last_problem.lock().clone(),
        }
    }

    /// The commands received since the last call, in order.
    pub(super) fn take_commands(&self) -> Vec<Command> {
        self.commands.try_iter().collect()
    }

    /// A command the window could not carry out (no such keyframe or part): counted with
    /// the ignored messages.
    pub(super) fn count_ignored(&self, why: String) {
        self.counts.applied.fetch_sub(1, Ordering::SeqCst);
        self.counts.ignored.fetch_add(1, Ordering::SeqCst);
        *self.counts.last_problem.lock() = Some(why);
    }

    /// Messages from now on wake `ctx`'s window.
    pub(super) fn set_repaint(&self, ctx: &egui::Context) {
        let mut repaint = self.repaint.lock();
        if repaint.is_none() {
            *repaint = Some(ctx.clone());
        }
    }
}

impl Drop for OscListener {
    fn drop(&mut self) {
        self.stop.take();
        let Some(thread) = self.thread.take() else {
            return;
        };
        // `recv_from` blocks: a datagram of our own wakes it to see the stop.
        match wake(self.address) {
            Ok(()) => {
                if thread.join().is_err() {
                    tracing::error!("the OSC listener thread panicked");
                }
            }
            // Left to end with the process rather than hang the window's closing.
            Err(e) => tracing::warn!("cannot wake the OSC listener to stop it: {e}"),
        }
    }
}

/// Sends an empty datagram to the listener at `address` (over loopback when it listens
/// on every interface).
fn wake(address: SocketAddr) -> std::io::Result<()> {
    let mut target = address;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let from: SocketAddr = match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    UdpSocket::bind(from)?.send_to(&[], target).map(|_| ())
}

/// The listener thread: one datagram at a time until the stop channel closes.
fn listen(
    socket: &UdpSocket,
    commands: &Sender<Command>,
    stop: &Receiver<()>,
    counts: &Counts,
    repaint: &Mutex<Option<egui::Context>>,
) {
    // The largest UDP payload.
    let mut buffer = vec![0u8; 65_536];
    let stopped = || stop.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected);
    loop {
        let received = socket.recv_from(&mut buffer);
        if stopped() {
            return;
        }
        let size = match received {
            Ok((size, _from)) => size,
            // A previous send's ICMP error or a signal: nothing lost, listen on.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!("OSC listener stopped: {e}");
                *counts.last_problem.lock() = Some(format!("the listener stopped: {e}"));
                return;
            }
        };
        let problem = |count: &AtomicU64, why: String| {
            tracing::debug!("OSC: {why}");
            count.fetch_add(1, Ordering::SeqCst);
            *counts.last_problem.lock() = Some(why);
        };
        match rosc::decoder::decode_udp(&buffer[..size]) {
            Err(e) => problem(
                &counts.malformed,
                format!("a malformed packet of {size} bytes ({e})"),
            ),
            Ok((_, packet)) => {
                for message in messages(packet) {
                    match command_of(&message) {
                        Ok(command) => {
                            counts.applied.fetch_add(1, Ordering::SeqCst);
                            select! {
                                send(commands, command) -> sent => if sent.is_err() { return },
                                recv(stop) -> _ => return,
                            }
                        }
                        Err(why) => problem(&counts.ignored, format!("{}: {why}", message.addr)),
                    }
                }
            }
        }
        if let Some(ctx) = &*repaint.lock() {
            ctx.request_repaint();
        }
    }
}

/// The messages of a packet, a bundle's in order.
fn messages(packet: OscPacket) -> Vec<OscMessage> {
    match packet {
        OscPacket::Message(message) => vec![message],
        OscPacket::Bundle(bundle) => bundle.content.into_iter().flat_map(messages).collect(),
    }
}

/// The command a message asks for, or why it cannot be one.
pub fn command_of(message: &OscMessage) -> Result<Command, String> {
    let Some(path) = message.addr.strip_prefix(OSC_PREFIX) else {
        return Err(format!("not a dreamwalk address (they start {OSC_PREFIX})"));
    };
    let parts: Vec<&str> = path.split('/').collect();
    let args = &message.args;
    match parts.as_slice() {
        ["play"] => match args.as_slice() {
            [] => Ok(Command::Play),
            [value] if number(value)? == 0.0 => Ok(Command::Pause),
            [_] => Ok(Command::Play),
            _ => Err("takes no argument, or one number".into()),
        },
        ["pause"] => Ok(Command::Pause),
        ["position"] => {
            let fraction = one_number(args)?;
            Ok(Command::Seek(fraction.clamp(0.0, 1.0)))
        }
        ["speed"] => {
            let steps = one_number(args)?.round();
            if steps < 1.0 {
                return Err(format!(
                    "{steps} steps between keyframes: give 1 to {MAX_STEPS_BETWEEN}"
                ));
            }
            Ok(Command::SetStepsBetween(
                (steps as usize).min(MAX_STEPS_BETWEEN),
            ))
        }
        ["seed"] => {
            let seed = one_number(args)?;
            if seed < 0.0 || seed.fract() != 0.0 || seed > u32::MAX as f64 {
                return Err(format!(
                    "seed {seed}: give a whole number, 0 to {}",
                    u32::MAX
                ));
            }
            Ok(Command::SetSeed(seed as u64))
        }
        ["keyframe", n, "prompt"] => {
            let keyframe = index(n, "keyframe")?;
            match args.as_slice() {
                [OscType::String(text)] => Ok(Command::SetPrompt {
                    keyframe,
                    text: text.clone(),
                }),
                _ => Err("takes one string".into()),
            }
        }
        ["keyframe", n, "weight", m] => Ok(Command::SetMixWeight {
            keyframe: index(n, "keyframe")?,
            part: index(m, "part")?,
            weight: one_number(args)?,
        }),
        _ => Err("unknown address".into()),
    }
}

/// A 0-based index written in an address.
fn index(text: &str, what: &str) -> Result<usize, String> {
    text.parse()
        .map_err(|_| format!("{what} `{text}` is not an index (0, 1, ...)"))
}

/// The one finite number a message carries.
fn one_number(args: &[OscType]) -> Result<f64, String> {
    match args {
        [value] => number(value),
        _ => Err(format!("takes one number, not {} arguments", args.len())),
    }
}

fn number(value: &OscType) -> Result<f64, String> {
    let number = match value {
        OscType::Int(v) => f64::from(*v),
        OscType::Long(v) => *v as f64,
        OscType::Float(v) => f64::from(*v),
        OscType::Double(v) => *v,
        OscType::Bool(v) => f64::from(u8::from(*v)),
        other => return Err(format!("{other:?} is not a number")),
    };
    if number.is_finite() {
        Ok(number)
    } else {
        Err(format!("{number} is not a finite number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(addr: &str, args: Vec<OscType>) -> OscMessage {
        OscMessage {
            addr: addr.into(),
            args,
        }
    }

    #[test]
    fn each_address_makes_its_command() {
        let cases = [
            (message("/dreamwalk/play", vec![]), Command::Play),
            (
                message("/dreamwalk/play", vec![OscType::Float(0.0)]),
                Command::Pause,
            ),
            (
                message("/dreamwalk/pause", vec![OscType::Int(1)]),
                Command::Pause,
            ),
            (
                message("/dreamwalk/position", vec![OscType::Float(0.25)]),
                Command::Seek(0.25),
            ),
            (
                message("/dreamwalk/position", vec![OscType::Double(1.5)]),
                Command::Seek(1.0),
            ),
            (
                message("/dreamwalk/speed", vec![OscType::Float(11.6)]),
                Command::SetStepsBetween(12),
            ),
            (
                message("/dreamwalk/speed", vec![OscType::Int(100_000)]),
                Command::SetStepsBetween(MAX_STEPS_BETWEEN),
            ),
            (
                message("/dreamwalk/seed", vec![OscType::Long(99)]),
                Command::SetSeed(99),
            ),
            (
                message(
                    "/dreamwalk/keyframe/1/prompt",
                    vec![OscType::String("a fox:1 | a wolf".into())],
                ),
                Command::SetPrompt {
                    keyframe: 1,
                    text: "a fox:1 | a wolf".into(),
                },
            ),
            (
                message("/dreamwalk/keyframe/0/weight/2", vec![OscType::Float(0.5)]),
                Command::SetMixWeight {
                    keyframe: 0,
                    part: 2,
                    weight: 0.5,
                },
            ),
        ];
        for (message, command) in cases {
            assert_eq!(command_of(&message), Ok(command), "{message:?}");
        }
    }

    #[test]
    fn unknown_addresses_and_bad_arguments_say_why() {
        let refused = [
            message("/other/play", vec![]),
            message("/dreamwalk/dance", vec![]),
            message("/dreamwalk/position", vec![]),
            message("/dreamwalk/position", vec![OscType::Float(f32::NAN)]),
            message("/dreamwalk/position", vec![OscType::String("half".into())]),
            message("/dreamwalk/speed", vec![OscType::Int(0)]),
            message("/dreamwalk/seed", vec![OscType::Float(1.5)]),
            message("/dreamwalk/seed", vec![OscType::Int(-3)]),
            message(
                "/dreamwalk/keyframe/x/prompt",
                vec![OscType::String("a".into())],
            ),
            message("/dreamwalk/keyframe/0/prompt", vec![OscType::Int(3)]),
            message("/dreamwalk/keyframe/0/weight/-1", vec![OscType::Float(1.0)]),
            message(
                "/dreamwalk/keyframe/0/weight/0",
                vec![OscType::Double(f64::INFINITY)],
            ),
        ];
        for message in refused {
            assert!(command_of(&message).is_err(), "{message:?}");
        }
    }

    #[test]
    fn a_port_in_use_is_refused_by_name() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let Err(error) = OscListener::bind(address) else {
            panic!("bound {address} twice");
        };
        let text = error.to_string();
        assert!(text.contains(&address.to_string()), "{text}");
        assert!(text.contains("choose another with --osc"), "{text}");
    }
}
