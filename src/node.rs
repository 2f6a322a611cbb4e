//! A twinfs process serving one volume at one mount point, as the primary
//! (read-write, mirroring to its peer) or as a replica (a peer daemon whose
//! mirror the mount point shows read-only), and the planned swap of the two
//! roles that `twinfs switchover` asks for.
//!
//! `twinfs mount` starts a node as the primary, `twinfs peer --mount` as a
//! replica. In a switchover the primary stops taking changes (its volume is
//! demoted in place: the mount stays and turns read-only), waits until the
//! peer holds its final CP, and asks the peer to take over. The peer's
//! daemon hands that to [`Node::take_over`]: the replica view is unmounted,
//! the peer directory becomes a volume (a new generation), and the volume
//! is mounted read-write in the same place, mirroring back. The old primary
//! then moves its image into a peer directory and serves it as the peer,
//! its mount showing the replica. Either process runs until the mount of
//! its current role is unmounted (or it gets SIGTERM).

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use twinfs_fs::device::{BlockDevice, FileDevice};
use twinfs_fs::fuse;
use twinfs_fs::{FsError, Volume, VolumeConfig};
use twinfs_replicate::encode::CpSync;
use twinfs_replicate::keys::Credentials;
use twinfs_replicate::peer::{
    self, PeerConfig, PeerDaemon, PeerLimits, Replica, ReplicaView, ShutdownHandle,
    SwitchoverRequest, Takeover,
};
use twinfs_replicate::source::{Mirror, MirrorConfig, Mode, DEFAULT_SYNC_TIMEOUT};
use twinfs_replicate::Compression;

use crate::control::{self, Request};

/// How long an unmount waits for the peer to apply the final CP.
const FINAL_CP_PEER_WAIT: Duration = Duration::from_secs(60);
/// How long a switchover waits for the peer to hold the final CP and take over.
const SWITCHOVER_WAIT: Duration = Duration::from_secs(120);
/// How long a takeover waits for the replica view to unmount before it
/// detaches it (a reader holding a file open keeps it busy).
const VIEW_UNMOUNT_WAIT: Duration = Duration::from_secs(5);

/// What this process needs to serve the volume read-write, kept for a role
/// switch: the mount's own settings, or defaults in a peer daemon.
#[derive(Clone)]
pub struct PrimarySettings {
    pub mountpoint: PathBuf,
    /// FUSE options of a read-write mount (`fsname=` is set per image).
    pub fuse_options: Vec<String>,
    /// The volume's configuration (`read_only` is ignored).
    pub volume: VolumeConfig,
    /// Bound of the queue to the peer.
    pub queue_bytes: usize,
    /// This machine's key, the keys it trusts and the shared secret (a
    /// primary without a peer has none).
    pub credentials: Option<Credentials>,
    /// When transfers to the peer are compressed.
    pub compress: Compression,
    /// What a source may use of this machine as the peer.
    pub limits: PeerLimits,
    /// The mode status reports for a primary without a peer (as configured).
    pub mode: Mode,
}

/// Where and how a primary mirrors.
#[derive(Clone)]
pub struct MirrorTo {
    pub addr: String,
    pub mode: Mode,
    pub cp_sync: CpSync,
}

/// The read-write side.
struct Primary {
    image: PathBuf,
    vol: Arc<Volume>,
    file_dev: Arc<FileDevice>,
    mirror: Option<Arc<Mirror>>,
    mode: Mode,
    unmounter: fuse::Unmounter,
}

/// The peer side: a daemon and, once a CP is applied, a read-only view.
struct Replica_ {
    dir: PathBuf,
    daemon: ShutdownHandle,
    /// Ends when the daemon has stopped.
    daemon_watch: Option<std::thread::JoinHandle<()>>,
    view: Option<View>,
}

/// A mounted read-only volume over a mirror image.
struct View {
    vol: Arc<Volume>,
    unmounter: fuse::Unmounter,
}

enum Role {
    Primary(Primary),
    Replica(Replica_),
    Ended,
}

struct State {
    role: Role,
    /// Bumped whenever the mount changes; the end of a mount or a daemon
    /// ends the node only when it belongs to the current epoch.
    epoch: u64,
    /// The current epoch's mount or daemon ended: the node stops.
    ended: bool,
    /// What ended it, if it failed.
    failure: Option<String>,
}

/// One process's service of one volume at one mount point.
pub struct Node {
    me: Weak<Node>,
    settings: PrimarySettings,
    state: Mutex<State>,
    cv: Condvar,
    /// Serialises role switches (they take seconds; status must not wait).
    switching: Mutex<()>,
    /// Serialises the replica view's opening with its reloads: the peer
    /// daemon's first applied CP and a switchover's own call may both find
    /// no view, and a second mount stacked on the first would hide the one
    /// that follows the CPs.
    view_opening: Mutex<()>,
    control: Mutex<Option<control::Server>>,
}

impl Node {
    /// A node serving `image` read-write at the settings' mount point,
    /// mirroring to `mirror_to` if given, with its control socket.
    pub fn start_primary(
        settings: PrimarySettings,
        image: &Path,
        read_only: bool,
        mirror_to: Option<MirrorTo>,
    ) -> Result<Arc<Node>, String> {
        let node = Node::new(settings);
        // First: another twinfs process serving this mount point refuses us
        // here, before anything is mounted over it.
        node.serve_control()?;
        let primary = node.open_primary(image, read_only, mirror_to)?;
        node.state.lock().role = Role::Primary(primary);
        Ok(node)
    }

    /// A node serving the peer directory `cfg.dir` as a replica, its
    /// mirror shown read-only at the settings' mount point once it holds a
    /// CP, able to take over in a switchover.
    pub fn start_replica(
        settings: PrimarySettings,
        dir: &Path,
        listen: &str,
    ) -> Result<(Arc<Node>, std::net::SocketAddr), String> {
        let node = Node::new(settings);
        node.serve_control()?;
        let addr = node.start_daemon(dir, listen, None)?;
        // Show the CP the replica already holds at once.
        if peer::peer_status(dir).is_ok_and(|s| s.applied_cp.is_some()) {
            node.after_commit(0, [0; 32]);
        }
        Ok((node, addr))
    }

    fn new(settings: PrimarySettings) -> Arc<Node> {
        Arc::new_cyclic(|me| Node {
            me: me.clone(),
            settings,
            state: Mutex::new(State {
                role: Role::Ended,
                epoch: 0,
                ended: false,
                failure: None,
            }),
            cv: Condvar::new(),
            switching: Mutex::new(()),
            view_opening: Mutex::new(()),
            control: Mutex::new(None),
        })
    }

    fn serve_control(self: &Arc<Self>) -> Result<(), String> {
        let server = control::serve(&self.settings.mountpoint, self.clone())?;
        *self.control.lock() = Some(server);
        Ok(())
    }

    /// The primary's mirror, if it is the primary and has one.
    pub fn mirror(&self) -> Option<Arc<Mirror>> {
        match &self.state.lock().role {
            Role::Primary(p) => p.mirror.clone(),
            _ => None,
        }
    }

    /// Closes what the first start opened (a mount that will not be served).
    pub fn abandon(&self) {
        self.stop();
        if let Err(e) = self.finish() {
            log::warn!("closing after a failed start: {e}");
        }
    }

    // ---- running ------------------------------------------------------------

    /// Serves until the current role's mount (or daemon) ends, then stops
    /// that role cleanly (a primary takes its final CP and waits for the
    /// peer to apply it).
    pub fn run(&self) -> Result<(), String> {
        {
            let mut st = self.state.lock();
            while !st.ended {
                self.cv.wait(&mut st);
            }
        }
        self.finish()
    }

    /// Asks the node to stop: unmounts the current mount (SIGTERM, SIGINT).
    pub fn stop(&self) {
        let st = self.state.lock();
        match &st.role {
            Role::Primary(p) => unmount(&p.unmounter),
            Role::Replica(r) => {
                r.daemon.shutdown();
                if let Some(v) = &r.view {
                    unmount(&v.unmounter);
                }
            }
            Role::Ended => {}
        }
    }

    /// Called by the watcher of a mount or daemon of epoch `epoch`.
    fn service_ended(&self, epoch: u64, failure: Option<String>) {
        let mut st = self.state.lock();
        if st.epoch == epoch && !st.ended {
            st.ended = true;
            st.failure = failure;
            self.cv.notify_all();
        }
    }

    fn finish(&self) -> Result<(), String> {
        *self.control.lock() = None;
        let (role, failure) = {
            let mut st = self.state.lock();
            (
                std::mem::replace(&mut st.role, Role::Ended),
                st.failure.take(),
            )
        };
        let closed = match role {
            Role::Primary(p) => close_primary(p),
            Role::Replica(r) => {
                r.daemon.shutdown();
                if let Some(w) = r.daemon_watch {
                    let _ = w.join();
                }
                if let Some(v) = r.view {
                    unmount(&v.unmounter);
                    let _ = v.vol.close();
                }
                Ok(())
            }
            Role::Ended => Ok(()),
        };
        match failure {
            Some(f) => Err(f),
            None => closed,
        }
    }

    // ---- the primary --------------------------------------------------------

    fn open_primary(
        self: &Arc<Self>,
        image: &Path,
        read_only: bool,
        mirror_to: Option<MirrorTo>,
    ) -> Result<Primary, String> {
        let file_dev = Arc::new(FileDevice::open(image, !read_only).map_err(|e| {
            format!("{e}; check the image path; a volume can be mounted only once at a time")
        })?);
        let dev: Arc<dyn BlockDevice> = file_dev.clone();
        let vcfg = VolumeConfig {
            read_only,
            ..self.settings.volume.clone()
        };
        let vol = Arc::new(Volume::open(dev, vcfg).map_err(|e| match e {
            FsError::ReplicaImage => "the image is a peer's replica (a mirror.img), not a volume; mount it read-only with -o ro, or make it a volume with `twinfs promote DIR` (DIR: the peer directory holding it) first".to_string(),
            FsError::NotAVolume => format!(
                "{}: {}; give the image made by `twinfs mkfs` (or by `twinfs promote`), or make one with `twinfs mkfs IMAGE --size SIZE`",
                image.display(),
                FsError::NotAVolume
            ),
            // Its message already says to run fsck.
            e @ (FsError::Corrupt { .. } | FsError::CorruptVolume(_)) => e.to_string(),
            e => format!("{e}; run `twinfs fsck` on the image"),
        })?);
        let mode = mirror_to.as_ref().map_or(self.settings.mode, |m| m.mode);
        let mirror = match (&mirror_to, &self.settings.credentials) {
            (Some(m), _) if read_only => {
                log::warn!("read-only mount: not mirroring to {}", m.addr);
                None
            }
            (Some(m), Some(credentials)) => Some(
                Mirror::start(
                    vol.clone(),
                    MirrorConfig {
                        peer: m.addr.clone(),
                        credentials: credentials.clone(),
                        compress: self.settings.compress,
                        mode: m.mode,
                        cp_sync: m.cp_sync,
                        sync_timeout: DEFAULT_SYNC_TIMEOUT,
                        queue_bytes: self.settings.queue_bytes,
                    },
                )
                .map_err(|e| format!("starting the mirror: {e}; check the --peer address"))?,
            ),
            (Some(_), None) => return Err("mirroring needs the keys and the secret".into()),
            (None, _) => None,
        };
        let mut options = self.settings.fuse_options.clone();
        if !options.iter().any(|o| o.starts_with("fsname=")) {
            options.push(format!("fsname={}", image.display()));
        }
        if read_only && !options.iter().any(|o| o == "ro") {
            options.push("ro".into());
        }
        let handle = match fuse::mount_with(
            vol.clone(),
            &self.settings.mountpoint,
            fuse::MountConfig::with_options(&options),
        ) {
            Ok(h) => h,
            Err(e) => {
                if let Some(m) = &mirror {
                    m.shutdown();
                }
                let _ = vol.close();
                return Err(format!(
                    "{e}; check that the mount point is an empty directory and /dev/fuse is usable"
                ));
            }
        };
        let unmounter = handle.unmounter();
        self.watch_mount(handle);
        log::info!(
            "serving {} read-{} on {}",
            image.display(),
            if read_only { "only" } else { "write" },
            self.settings.mountpoint.display()
        );
        Ok(Primary {
            image: image.to_path_buf(),
            vol,
            file_dev,
            mirror,
            mode,
            unmounter,
        })
    }

    /// Waits for a mount's session on a thread of its own and tells the
    /// node when it ends.
    fn watch_mount(self: &Arc<Self>, handle: fuse::MountHandle) {
        let epoch = self.state.lock().epoch;
        let node = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("twinfs-mount-watch".into())
            .spawn(move || {
                let r = handle.wait();
                if let Some(n) = node.upgrade() {
                    n.service_ended(
                        epoch,
                        r.err()
                            .map(|e| format!("the FUSE session failed: {e}; check the kernel log")),
                    );
                }
            });
    }

    // ---- the replica --------------------------------------------------------

    /// Starts the peer daemon on `dir` (a replica role); the view is
    /// mounted at the first applied CP.
    fn start_daemon(
        self: &Arc<Self>,
        dir: &Path,
        listen: &str,
        listener: Option<std::net::TcpListener>,
    ) -> Result<std::net::SocketAddr, String> {
        let credentials = self
            .settings
            .credentials
            .clone()
            .ok_or("a peer needs the keys and the secret shared with the source")?;
        let daemon = PeerDaemon::start(PeerConfig {
            dir: dir.to_path_buf(),
            listen: listen.to_string(),
            credentials,
            limits: self.settings.limits,
            view: Some(self.clone() as Arc<dyn ReplicaView>),
            takeover: Some(self.clone() as Arc<dyn Takeover>),
            listener,
        })
        .map_err(|e| format!("{e}; check --dir and --listen; another peer may be using them"))?;
        let addr = daemon.local_addr();
        let handle = daemon.shutdown_handle();
        let epoch = self.state.lock().epoch;
        let node = Arc::downgrade(self);
        let watch = std::thread::Builder::new()
            .name("twinfs-peer-watch".into())
            .spawn(move || {
                let r = daemon.run();
                if let Some(n) = node.upgrade() {
                    n.service_ended(epoch, r.err().map(|e| e.to_string()));
                }
            })
            .map_err(|e| format!("starting a thread: {e}"))?;
        self.state.lock().role = Role::Replica(Replica_ {
            dir: dir.to_path_buf(),
            daemon: handle,
            daemon_watch: Some(watch),
            view: None,
        });
        eprintln!("twinfs peer: listening on {addr} for {}", dir.display());
        Ok(addr)
    }

    fn open_view(self: &Arc<Self>, image: &Path) -> Result<View, String> {
        let dev: Arc<dyn BlockDevice> =
            Arc::new(FileDevice::open(image, false).map_err(|e| e.to_string())?);
        let vol = Arc::new(
            Volume::open(
                dev,
                VolumeConfig {
                    read_only: true,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?,
        );
        let cfg = fuse::MountConfig {
            options: vec!["ro".into(), format!("fsname={}", image.display())],
            changing: true,
            ..Default::default()
        };
        let handle = fuse::mount_with(vol.clone(), &self.settings.mountpoint, cfg)
            .map_err(|e| e.to_string())?;
        let unmounter = handle.unmounter();
        self.watch_mount(handle);
        Ok(View { vol, unmounter })
    }

    // ---- switchover: the primary's side -------------------------------------

    /// Hands the volume over to the peer and becomes its peer: see the
    /// module documentation. `listen` is where this machine will serve as
    /// the peer; `dir` the peer directory its image moves into (default:
    /// the directory the image already lives in, if it was a peer's).
    pub fn switch_to_replica(
        self: &Arc<Self>,
        listen: Option<&str>,
        dir: Option<PathBuf>,
    ) -> Result<serde_json::Value, String> {
        let _switching = self.switching.lock();
        let started = Instant::now();
        let (vol, mirror, image, file_dev, unmounter) = match &self.state.lock().role {
            Role::Primary(p) => (
                p.vol.clone(),
                p.mirror
                    .clone()
                    .ok_or("this mount has no peer to hand over to")?,
                p.image.clone(),
                p.file_dev.clone(),
                p.unmounter.clone(),
            ),
            _ => return Err("this mount is not the primary".into()),
        };
        let dir = peer_dir_for(&image, dir)?;
        let st = mirror.status();
        // By default the old primary listens on the port its peer used.
        let listen = match listen {
            Some(l) => l.to_string(),
            None => {
                let port = st.addr.rsplit(':').next().unwrap_or("7070");
                format!("0.0.0.0:{port}")
            }
        };
        let listen = listen.as_str();
        let return_to = advertised(listen, &mirror)?;
        // Bound before the hand-over: the new primary's first connection
        // waits in the backlog until the daemon runs, instead of failing.
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| format!("listening on {listen}: {e}; give another --listen"))?;
        if !st.connected {
            return Err(format!(
                "the peer {} is not connected{}",
                st.addr,
                st.last_error.map_or(String::new(), |e| format!(": {e}"))
            ));
        }
        let cp = vol
            .demote()
            .map_err(|e| format!("the final CP failed: {e}"))?;
        let sb = vol.committed();
        log::info!(
            "switchover: no more changes here; final CP {}, handing over to {}",
            cp.0,
            st.addr
        );
        let (new_cp, new_root) = match mirror.switchover(&sb, &return_to, SWITCHOVER_WAIT) {
            Ok(x) => x,
            Err(why) => {
                log::warn!("switchover failed ({why}); this mount goes on as the primary");
                vol.resume_writes()
                    .map_err(|e| format!("{why}; and taking changes again failed: {e}"))?;
                return Err(format!("{why}; this mount goes on as the primary"));
            }
        };
        let handed_over = started.elapsed();
        mirror.shutdown();
        peer::failback::become_peer_dir(&image, &dir, &sb)
            .map_err(|e| format!("the peer took over at CP {new_cp}, but making {} the peer directory failed: {e}; fix it and run `twinfs failback` on {}", dir.display(), image.display()))?;
        // The read-write mount makes way for a replica view (which the
        // kernel must not serve from caches made for a live tree). Its end
        // is expected now; a busy one lingers detached, read-only.
        self.state.lock().epoch += 1;
        release_view(View { vol, unmounter });
        file_dev.unlock();
        let addr = self.start_daemon(&dir, listen, Some(listener))?;
        self.after_commit(sb.cp.0, sb.root_hash().0);
        log::info!(
            "switchover done in {:.3} s: the peer is the primary at CP {new_cp}; serving as its peer on {addr}",
            started.elapsed().as_secs_f64()
        );
        Ok(serde_json::json!({
            "final_cp": cp.0,
            "new_primary_cp": new_cp,
            "new_primary_root_hash": twinfs_fs::hex(&new_root),
            "dir": dir,
            "listen": addr.to_string(),
            "handed_over_secs": handed_over.as_secs_f64(),
        }))
    }
}

/// Where the old primary's image goes: `dir`, or the peer directory it
/// already lives in (a primary that was a peer before).
fn peer_dir_for(image: &Path, dir: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let parent = image.parent().ok_or("the image has no directory")?;
    if image.file_name().is_some_and(|n| n == peer::IMAGE_FILE)
        && parent.join(peer::STATE_FILE).is_file()
    {
        return Ok(parent.to_path_buf());
    }
    Err(format!(
        "give --dir: the peer directory {} will move into to serve as the peer",
        image.display()
    ))
}

/// The address the peer should mirror back to: `listen`, with an
/// unspecified host (0.0.0.0, ::) replaced by the address this machine
/// reaches the peer from.
fn advertised(listen: &str, mirror: &Mirror) -> Result<String, String> {
    let addr = listen
        .to_socket_addrs()
        .map_err(|e| format!("--listen {listen}: {e}"))?
        .next()
        .ok_or_else(|| format!("--listen {listen} resolves to nothing"))?;
    if !addr.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    let local = mirror
        .local_addr()
        .ok_or("the peer is not connected, so this machine's address toward it is unknown")?;
    Ok(std::net::SocketAddr::new(local.ip(), addr.port()).to_string())
}

fn unmount(u: &fuse::Unmounter) {
    if u.unmount().is_err() {
        let _ = u.unmount_lazy();
    }
}

/// Ends a primary: its final CP, applied at the peer when connected.
fn close_primary(p: Primary) -> Result<(), String> {
    // From here on an opener of the image waits for us instead of refusing.
    if let Err(e) = p.file_dev.mark_closing() {
        log::warn!("could not mark {} as closing: {e}", p.image.display());
    }
    let closing = p.vol.checkpoint();
    if let (Some(m), Ok(cp)) = (&p.mirror, &closing) {
        if m.status().connected && !m.wait_applied(*cp, FINAL_CP_PEER_WAIT) {
            log::warn!(
                "the peer did not apply the final CP {} before unmount",
                cp.0
            );
        }
    }
    if let Some(m) = &p.mirror {
        m.shutdown();
    }
    let closed = p.vol.close();
    closing
        .and(closed)
        .map(|_| ())
        .map_err(|e| format!("{e}; run `twinfs fsck` on the image"))
}

// ---- the replica view and the takeover ------------------------------------

impl ReplicaView for Node {
    fn before_overwrite(&self, _cp: u64) {
        if let Role::Replica(Replica_ { view: Some(v), .. }) = &self.state.lock().role {
            v.vol.begin_overwrite();
        }
    }

    fn after_commit(&self, cp: u64, _root_hash: [u8; 32]) {
        let _opening = self.view_opening.lock();
        let (dir, has_view) = match &self.state.lock().role {
            Role::Replica(r) => (r.dir.clone(), r.view.is_some()),
            _ => return,
        };
        if has_view {
            if let Role::Replica(Replica_ { view: Some(v), .. }) = &self.state.lock().role {
                if let Err(e) = v.vol.reload() {
                    log::error!("replica view: switching to CP {cp}: {e}");
                }
            }
            return;
        }
        // The first applied CP: mount the view. The node is always held in
        // an Arc (the daemon holds one as its view).
        let Some(me) = self.me() else { return };
        match me.open_view(&dir.join(peer::IMAGE_FILE)) {
            Ok(v) => {
                log::info!(
                    "replica view mounted on {}",
                    self.settings.mountpoint.display()
                );
                if let Role::Replica(r) = &mut self.state.lock().role {
                    r.view = Some(v);
                }
            }
            Err(e) => log::error!(
                "replica view on {}: {e}",
                self.settings.mountpoint.display()
            ),
        }
    }
}

impl Takeover for Node {
    fn take_over(
        &self,
        replica: &mut Replica,
        req: &SwitchoverRequest,
    ) -> Result<(u64, [u8; 32]), String> {
        let me = self.me().ok_or("the node is shutting down")?;
        let _switching = self.switching.lock();
        let mode: Mode = req.mode.parse()?;
        let cp_sync = CpSync::from_name(&req.cp_sync).ok_or("unknown cp_sync")?;
        // The view goes away now: its end and the daemon's are expected.
        let view = {
            let mut st = self.state.lock();
            st.epoch += 1;
            match &mut st.role {
                Role::Replica(r) => r.view.take(),
                _ => return Err("this node is not a replica".into()),
            }
        };
        if let Some(v) = view {
            release_view(v);
        }
        let promoted = replica
            .promote_in_place()
            .map_err(|e| format!("making the replica a volume: {e}"))?;
        let primary = me.open_primary(
            &promoted.image,
            false,
            Some(MirrorTo {
                addr: req.return_to.clone(),
                mode,
                cp_sync,
            }),
        )?;
        let sb = primary.vol.committed();
        self.state.lock().role = Role::Primary(primary);
        log::info!(
            "took over: {} is the primary at CP {}, mirroring to {}",
            promoted.image.display(),
            sb.cp.0,
            req.return_to
        );
        Ok((sb.cp.0, sb.root_hash().0))
    }
}

/// Unmounts a replica view (detaching it when busy) and lets go of its image.
fn release_view(v: View) {
    let _ = v.unmounter.unmount();
    let deadline = Instant::now() + VIEW_UNMOUNT_WAIT;
    while v.unmounter.is_mounted() && Instant::now() < deadline {
        if v.unmounter.unmount().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if v.unmounter.is_mounted() {
        log::warn!("the replica view is busy: detaching it (its readers keep the old CP)");
        let _ = v.unmounter.unmount_lazy();
    }
    let _ = v.vol.close();
    v.vol.cache().device().unlock();
}

impl Node {
    /// This node as an `Arc` (it always lives in one: see the constructors).
    fn me(&self) -> Option<Arc<Node>> {
        self.me.upgrade()
    }
}

// ---- control requests ------------------------------------------------------

impl control::Serve for Node {
    fn answer(self: Arc<Self>, req: Request) -> Result<serde_json::Value, String> {
        if let Request::Switchover { listen, dir } = req {
            return self.switch_to_replica(listen.as_deref(), dir);
        }
        let target = match &self.state.lock().role {
            Role::Primary(p) => control::Target {
                vol: p.vol.clone(),
                mirror: p.mirror.clone(),
                mode: p.mode,
            },
            Role::Replica(r) => {
                return match req {
                    Request::Status => Ok(serde_json::json!({"role": "replica", "dir": r.dir})),
                    _ => Err(format!(
                        "{} is a replica view (read-only); the primary is the peer's mount — see `twinfs status --dir {}`",
                        self.settings.mountpoint.display(),
                        r.dir.display()
                    )),
                };
            }
            Role::Ended => return Err("the mount is starting or stopping; try again".into()),
        };
        control::answer(req, &target)
    }
}
