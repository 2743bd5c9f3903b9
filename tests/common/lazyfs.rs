//! A lazy in-memory FUSE filesystem for the tests: what the kernel cannot
//! show, a filesystem that keeps only what was synced.
//!
//! Every change (writes, creates, renames, links, unlinks) goes to the
//! volatile view. `fsync` of a file copies its data and attributes into the
//! durable view, `fsync` of a directory its entries. [`LazyFs::crash`] drops
//! the volatile view and rebuilds it from the durable one, as a power cut
//! would: a name whose directory was never synced is gone, a file whose
//! data was never synced is empty.
//!
//! Like many FUSE filesystems it has no `O_TMPFILE` (fuser has no `tmpfile`
//! operation) and refuses `renameat2` flags with `EINVAL`: it is where the
//! crate's named-temp and link+unlink fallbacks run.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const ROOT: u64 = 1;
/// Nothing is cached by the kernel: the state changes behind its back.
const TTL: Duration = Duration::ZERO;
/// `O_TRUNC` on Linux, in an open's flags.
const O_TRUNC: i32 = 0o1000;

#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    File(Vec<u8>),
    Dir(BTreeMap<OsString, u64>),
    Symlink(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Node {
    pub content: Content,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Names pointing at this node, in the volatile view.
    nlink: u32,
    /// Open handles: an unlinked node lives until the last is released.
    opens: u32,
    /// References the kernel holds (entries it was given, not yet
    /// forgotten): an unlinked node lives until the kernel forgets it.
    lookups: u64,
}

impl Node {
    fn new(content: Content, perm: u16, uid: u32, gid: u32) -> Node {
        let now = SystemTime::now();
        Node {
            content,
            perm,
            uid,
            gid,
            mtime: now,
            ctime: now,
            nlink: 0,
            opens: 0,
            lookups: 0,
        }
    }

    /// What a crash brings back of a node whose name was synced but not
    /// itself: its kind and attributes, no data.
    fn never_synced(&self) -> Node {
        let empty = match self.content {
            Content::File(_) => Content::File(Vec::new()),
            Content::Dir(_) => Content::Dir(BTreeMap::new()),
            Content::Symlink(ref t) => Content::Symlink(t.clone()),
        };
        Node::new(empty, self.perm, self.uid, self.gid)
    }

    fn entries(&self) -> Option<&BTreeMap<OsString, u64>> {
        match &self.content {
            Content::Dir(e) => Some(e),
            _ => None,
        }
    }
}

/// The two views, and what the test wants to know about them.
#[derive(Debug, Default)]
pub struct State {
    next_ino: u64,
    /// What every process sees now.
    nodes: HashMap<u64, Node>,
    /// What a crash keeps: per node, its content and attributes as of its
    /// last fsync (for a directory, its entries).
    durable: HashMap<u64, Node>,
    /// fsyncs of files and of directories, and crashes, so far.
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub crashes: u64,
}

type Res<T> = Result<T, Errno>;

impl State {
    fn new() -> State {
        let mut root = Node::new(Content::Dir(BTreeMap::new()), 0o755, 0, 0);
        root.nlink = 2;
        let mut s = State {
            next_ino: ROOT + 1,
            ..State::default()
        };
        s.durable.insert(ROOT, root.clone());
        s.nodes.insert(ROOT, root);
        s
    }

    fn node(&self, ino: u64) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir_mut(&mut self, ino: u64) -> Res<&mut BTreeMap<OsString, u64>> {
        match &mut self.node_mut(ino)?.content {
            Content::Dir(e) => Ok(e),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Res<u64> {
        let entries = self.node(parent)?.entries().ok_or(Errno::ENOTDIR)?;
        entries.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64) -> Res<FileAttr> {
        let n = self.node(ino)?;
        let (kind, size) = match &n.content {
            Content::File(d) => (FileType::RegularFile, d.len() as u64),
            Content::Dir(e) => (FileType::Directory, e.len() as u64),
            Content::Symlink(t) => (FileType::Symlink, t.as_os_str().len() as u64),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.ctime,
            crtime: n.ctime,
            kind,
            perm: n.perm,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    /// Adds `name` -> `ino` in `parent`, which must not have it.
    fn add_entry(&mut self, parent: u64, name: &OsStr, ino: u64) -> Res<()> {
        let entries = self.dir_mut(parent)?;
        if entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        entries.insert(name.to_owned(), ino);
        self.touch(parent);
        self.node_mut(ino)?.nlink += 1;
        Ok(())
    }

    fn new_node(&mut self, parent: u64, name: &OsStr, node: Node) -> Res<u64> {
        self.lookup(parent, name)
            .map_or(Ok(()), |_| Err(Errno::EEXIST))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let is_dir = matches!(node.content, Content::Dir(_));
        self.nodes.insert(ino, node);
        self.add_entry(parent, name, ino)?;
        if is_dir {
            self.node_mut(ino)?.nlink += 1; // its "."
        }
        Ok(ino)
    }

    fn touch(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            let now = SystemTime::now();
            n.mtime = now;
            n.ctime = now;
        }
    }

    /// Drops one name of `ino`; frees it once nothing names or holds it.
    fn drop_link(&mut self, ino: u64) {
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        n.nlink = n.nlink.saturating_sub(1);
        if matches!(n.content, Content::Dir(_)) && n.nlink == 1 {
            n.nlink = 0;
        }
        self.collect(ino);
    }

    /// Frees `ino` from the volatile view once nothing names or holds it.
    /// Its durable copy stays while a synced directory still names it: a
    /// crash brings it back there (empty if it was never synced itself).
    fn collect(&mut self, ino: u64) {
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        if n.nlink > 0 || n.opens > 0 || n.lookups > 0 {
            return;
        }
        let n = self.nodes.remove(&ino).unwrap();
        let named = self
            .durable
            .values()
            .filter_map(Node::entries)
            .any(|e| e.values().any(|i| *i == ino));
        if named {
            self.durable.entry(ino).or_insert_with(|| n.never_synced());
        } else {
            self.durable.remove(&ino);
        }
    }

    fn remove_entry(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        match (&self.node(ino)?.content, want_dir) {
            (Content::Dir(e), true) if !e.is_empty() => return Err(Errno::ENOTEMPTY),
            (Content::Dir(_), false) => return Err(Errno::EISDIR),
            (Content::Dir(_), true) => {}
            (_, true) => return Err(Errno::ENOTDIR),
            (_, false) => {}
        }
        self.dir_mut(parent)?.remove(name);
        self.touch(parent);
        self.drop_link(ino);
        Ok(())
    }

    fn rename(&mut self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        let is_dir = matches!(self.node(ino)?.content, Content::Dir(_));
        if let Ok(old) = self.lookup(newparent, newname) {
            if old == ino {
                return Ok(());
            }
            match (&self.node(old)?.content, is_dir) {
                (Content::Dir(e), true) if !e.is_empty() => return Err(Errno::ENOTEMPTY),
                (Content::Dir(_), false) => return Err(Errno::EISDIR),
                (_, true) if !matches!(self.node(old)?.content, Content::Dir(_)) => {
                    return Err(Errno::ENOTDIR)
                }
                _ => {}
            }
            self.dir_mut(newparent)?.remove(newname);
            self.drop_link(old);
        }
        self.dir_mut(parent)?.remove(name);
        self.dir_mut(newparent)?.insert(newname.to_owned(), ino);
        self.touch(parent);
        self.touch(newparent);
        self.touch(ino);
        Ok(())
    }

    fn sync(&mut self, ino: u64) -> Res<()> {
        let node = self.node(ino)?.clone();
        if matches!(node.content, Content::Dir(_)) {
            self.dir_syncs += 1;
        } else {
            self.file_syncs += 1;
        }
        self.durable.insert(ino, node);
        Ok(())
    }

    /// The power cut: the volatile view becomes what the durable view holds,
    /// walking from the root through synced directories. A node named there
    /// but never synced itself comes back empty.
    pub fn crash(&mut self) {
        let mut nodes: HashMap<u64, Node> = HashMap::new();
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if nodes.contains_key(&ino) {
                continue;
            }
            let mut node = match (self.durable.get(&ino), self.nodes.get(&ino)) {
                (Some(n), _) => n.clone(),
                // Named by a synced directory, never synced itself: an
                // inode with no data (the zero-length file of a rename
                // without fsync).
                (None, Some(was)) => was.never_synced(),
                (None, None) => unreachable!("collect keeps what a synced directory names"),
            };
            node.opens = 0;
            node.nlink = 0;
            node.lookups = 0;
            if let Content::Dir(e) = &node.content {
                todo.extend(e.values().copied());
            }
            nodes.insert(ino, node);
        }
        // Every name of a node that came back counts as a link; the walk
        // brought back every node named.
        let named: Vec<u64> = nodes
            .values()
            .filter_map(Node::entries)
            .flat_map(|e| e.values().copied())
            .collect();
        for ino in named {
            let n = nodes
                .get_mut(&ino)
                .expect("the walk brings back every node named");
            n.nlink += if matches!(n.content, Content::Dir(_)) {
                2
            } else {
                1
            };
        }
        nodes.get_mut(&ROOT).unwrap().nlink = 2;
        self.durable.retain(|ino, _| nodes.contains_key(ino));
        self.nodes = nodes;
        self.crashes += 1;
    }
}

/// The FUSE side: every operation locks the shared [`State`].
struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// mknod, mkdir, symlink: a new node named `name` in `parent`, owned by
    /// the caller.
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        content: Content,
        perm: u16,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        let node = Node::new(content, perm, req.uid(), req.gid());
        let r = s.new_node(parent.0, name, node).and_then(|i| s.attr(i));
        entry(&mut s, reply, r);
    }
}

/// Replies with an entry; the kernel now holds a reference to it.
fn entry(s: &mut State, reply: ReplyEntry, r: Res<FileAttr>) {
    match r {
        Ok(a) => {
            if let Some(n) = s.nodes.get_mut(&a.ino.0) {
                n.lookups += 1;
            }
            reply.entry(&TTL, &a, Generation(0))
        }
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Res<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn attr(reply: ReplyAttr, r: Res<FileAttr>) {
    match r {
        Ok(a) => reply.attr(&TTL, &a),
        Err(e) => reply.error(e),
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// The permission bits a create asks for, as the kernel passes them.
fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        let r = s.lookup(parent.0, name).and_then(|i| s.attr(i));
        entry(&mut s, reply, r);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut s = self.state();
        if let Some(n) = s.nodes.get_mut(&ino.0) {
            n.lookups = n.lookups.saturating_sub(nlookup);
        }
        s.collect(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        attr(reply, self.state().attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let r = (|| {
            let n = s.node_mut(ino.0)?;
            if let Some(m) = mode {
                n.perm = (m & 0o7777) as u16;
            }
            if let Some(u) = uid {
                n.uid = u;
            }
            if let Some(g) = gid {
                n.gid = g;
            }
            if let Some(len) = size {
                match &mut n.content {
                    Content::File(d) => d.resize(len as usize, 0),
                    _ => return Err(Errno::EISDIR),
                }
                n.mtime = SystemTime::now();
            }
            if let Some(t) = mtime {
                n.mtime = time(t);
            }
            n.ctime = SystemTime::now();
            s.attr(ino.0)
        })();
        attr(reply, r);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.state().node(ino.0).map(|n| n.content.clone()) {
            Ok(Content::Symlink(t)) => reply.data(t.as_os_str().as_encoded_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & 0o170000 != 0o100000 {
            return reply.error(Errno::EPERM); // regular files only
        }
        self.make(
            req,
            parent,
            name,
            Content::File(Vec::new()),
            perm(mode, umask),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.make(
            req,
            parent,
            name,
            Content::Dir(BTreeMap::new()),
            perm(mode, umask),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.state().remove_entry(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.state().remove_entry(parent.0, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        let node = Node::new(
            Content::Symlink(target.to_owned()),
            0o777,
            req.uid(),
            req.gid(),
        );
        let r = s
            .new_node(parent.0, link_name, node)
            .and_then(|i| s.attr(i));
        entry(&mut s, reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            // As many FUSE filesystems answer RENAME_NOREPLACE.
            return reply.error(Errno::EINVAL);
        }
        empty(
            reply,
            self.state().rename(parent.0, name, newparent.0, newname),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        let r = (|| {
            if matches!(s.node(ino.0)?.content, Content::Dir(_)) {
                return Err(Errno::EPERM);
            }
            s.add_entry(newparent.0, newname, ino.0)?;
            s.touch(ino.0);
            s.attr(ino.0)
        })();
        entry(&mut s, reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.state();
        match s.node_mut(ino.0) {
            Ok(n) => {
                n.opens += 1;
                if flags.0 & O_TRUNC != 0 {
                    if let Content::File(d) = &mut n.content {
                        d.clear();
                    }
                }
                reply.opened(FileHandle(ino.0), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        match s.node(ino.0).map(|n| &n.content) {
            Ok(Content::File(d)) => {
                let start = (offset as usize).min(d.len());
                let end = (start + size as usize).min(d.len());
                reply.data(&d[start..end]);
            }
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        match s.node_mut(ino.0) {
            Ok(n) => {
                let Content::File(d) = &mut n.content else {
                    return reply.error(Errno::EISDIR);
                };
                let end = offset as usize + data.len();
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[offset as usize..end].copy_from_slice(data);
                n.mtime = SystemTime::now();
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        if let Ok(n) = s.node_mut(ino.0) {
            n.opens = n.opens.saturating_sub(1);
        }
        s.collect(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.state().sync(ino.0));
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = self.state();
        let Ok(entries) = s
            .node(ino.0)
            .and_then(|n| n.entries().ok_or(Errno::ENOTDIR))
        else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut all = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (ino.0, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in entries {
            let kind = match s.nodes.get(child).map(|n| &n.content) {
                Some(Content::Dir(_)) => FileType::Directory,
                Some(Content::Symlink(_)) => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            all.push((*child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.state().sync(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let node = Node::new(
            Content::File(Vec::new()),
            perm(mode, umask),
            req.uid(),
            req.gid(),
        );
        let r = s.new_node(parent.0, name, node).and_then(|i| {
            s.node_mut(i)?.opens += 1;
            s.attr(i)
        });
        match r {
            Ok(a) => {
                s.node_mut(a.ino.0).unwrap().lookups += 1;
                reply.created(
                    &TTL,
                    &a,
                    Generation(0),
                    FileHandle(a.ino.0),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted [`LazyFs`]; unmounted on drop.
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: tempfile::TempDir,
}

impl LazyFs {
    /// Mounts a fresh, empty lazy filesystem on a new directory (root and
    /// `/dev/fuse` needed). `None` when that cannot be done here.
    pub fn mount() -> Option<LazyFs> {
        if !super::is_root() || !Path::new("/dev/fuse").exists() {
            return None;
        }
        let mountpoint = super::scratch();
        let state = Arc::new(Mutex::new(State::new()));
        let session = Self::spawn(&state, mountpoint.path())
            .map_err(|e| eprintln!("lazyfs: {e}"))
            .ok()?;
        Some(LazyFs {
            state,
            session: Some(session),
            mountpoint,
        })
    }

    fn spawn(state: &Arc<Mutex<State>>, at: &Path) -> std::io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("taw-lazyfs".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        config.acl = fuser::SessionACL::All;
        fuser::spawn_mount(Fs(state.clone()), at, &config)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// The shared state, to read the counters or the tree.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A power cut: unmounts (no process may have files open here), drops
    /// the volatile view, and mounts the durable one again.
    pub fn crash(&mut self) {
        if let Some(session) = self.session.take() {
            unmount(session, self.mountpoint.path()).expect("unmount lazyfs");
        }
        self.state().crash();
        self.session =
            Some(Self::spawn(&self.state, self.mountpoint.path()).expect("remount lazyfs"));
    }
}

/// Unmounts the mount of `session` at `at` (retried while busy, see
/// [`super::unmount`]) and joins its thread.
fn unmount(session: fuser::BackgroundSession, at: &Path) -> std::io::Result<()> {
    match super::unmount(at) {
        // The session's thread sees the unmount and ends.
        true => session.join(),
        false => session.umount_and_join(),
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let path = self.mountpoint.path();
            if let Err(e) = unmount(session, path) {
                eprintln!("lazyfs: unmount {}: {e}", path.display());
                super::unmount_or_detach(path);
            }
        }
    }
}
