//! `mmio_registers`: the virtio-mmio transport in front of a device, as a
//! sequence of guest register reads and writes of any width at any offset
//! of (and past) the window, with notifications also arriving the way
//! ioeventfds deliver them, over guest memory from the input.
//!
//! Input: `device u8` (modulo 4: block, balloon with every feature,
//! virtio-mem, net on a real TAP in a private network namespace), a part
//! of accesses, then memory chunks. An access is a `kind u8` and an
//! `offset u16`: bits 0-1 of the kind say what (0 read, 1 write with the
//! data following, 2 the event loop delivers a notification for the
//! queue in the next byte, 3 a host-side action with the next byte as
//! its argument: net reads its TAP, the balloon asks for statistics,
//! virtio-mem is asked for that many blocks), and bits 2-4 pick the
//! width from [`WIDTHS`].

use std::sync::{Arc, Mutex};

use devices::ram::GuestRam;
use devices::virtio::balloon::{Balloon, BalloonConfig};
use devices::virtio::block::Block;
use devices::virtio::mem::Mem;
use devices::virtio::net::{Net, NetConfig};
use devices::virtio::testing::{Buf, DriverQueue};
use devices::virtio::{
    VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use vm_memory::{Bytes, GuestAddress};
use vmm::transport::mmio::{
    MmioTransport, CONFIG_SPACE_OFFSET, DEVICE_FEATURES_OFFSET, DEVICE_FEATURES_SEL_OFFSET,
    DRIVER_FEATURES_OFFSET, DRIVER_FEATURES_SEL_OFFSET, INTERRUPT_ACK_OFFSET,
    INTERRUPT_STATUS_OFFSET, MAGIC_VALUE_OFFSET, NOTIFY_OFFSET, QUEUE_DESC_HIGH_OFFSET,
    QUEUE_DESC_LOW_OFFSET, QUEUE_DEVICE_HIGH_OFFSET, QUEUE_DEVICE_LOW_OFFSET,
    QUEUE_DRIVER_HIGH_OFFSET, QUEUE_DRIVER_LOW_OFFSET, QUEUE_NUM_MAX_OFFSET, QUEUE_NUM_OFFSET,
    QUEUE_READY_OFFSET, QUEUE_SEL_OFFSET, STATUS_OFFSET, VERSION_OFFSET,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guest::{self, MEM_BASE, MEM_BLOCK};
use super::input::{Builder, Input};

/// Access widths, by bits 2-4 of the kind; 4 first, so that zeros make
/// register-sized accesses.
pub const WIDTHS: [usize; 8] = [4, 1, 2, 8, 0, 3, 16, 4];
const MAX_ACCESSES: usize = 512;

pub const BLOCK: u8 = 0;
pub const BALLOON: u8 = 1;
pub const MEM: u8 = 2;
pub const NET: u8 = 3;

enum Dev {
    Block(Arc<Mutex<Block>>),
    Balloon(Arc<Mutex<Balloon>>),
    Mem(Arc<Mutex<Mem>>),
    Net(Arc<Mutex<Net>>),
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs one input; returns how many chains went to the used rings.
pub fn run(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let which = input.u8() % 4;
    let mut accesses = input.part();
    let ram = match which {
        MEM => guest::ram_with_mem(),
        _ => guest::boot_ram(),
    };
    let (_image, disk) = guest::disk_image(false);
    let dev = make_device(which, &disk, ram.clone());
    guest::load_chunks(ram.memory(), &mut input);
    let shared: Arc<Mutex<dyn VirtioDevice>> = match &dev {
        Dev::Block(d) => d.clone(),
        Dev::Balloon(d) => d.clone(),
        Dev::Mem(d) => d.clone(),
        Dev::Net(d) => d.clone(),
    };
    let irq = EventFd::new(EFD_NONBLOCK).expect("an eventfd");
    let mut t = MmioTransport::new(shared.clone(), irq).expect("the transport's eventfds");
    let mut buf = [0u8; 16];
    let mut work = 0;
    for _ in 0..MAX_ACCESSES {
        if accesses.is_empty() {
            break;
        }
        let before = guest::next_used(lock(&shared).common());
        let kind = accesses.u8();
        let offset = u64::from(accesses.u16());
        let data = &mut buf[..WIDTHS[usize::from(kind >> 2) & 7]];
        match kind & 3 {
            0 => t.read(offset, data),
            1 => {
                data.fill(0);
                let given = accesses.bytes(data.len());
                data[..given.len()].copy_from_slice(given);
                t.write(offset, data);
            }
            // The event loop takes the device lock and notifies, with no
            // check of its own but that the ioeventfd exists.
            2 => {
                let q = u16::from(accesses.u8());
                if usize::from(q) < t.queue_evts().len() {
                    lock(&shared).queue_notify(q);
                }
            }
            _ => {
                let arg = accesses.u8();
                match &dev {
                    Dev::Block(_) => {}
                    Dev::Balloon(d) => {
                        lock(d).request_stats();
                    }
                    Dev::Mem(d) => {
                        let _ = lock(d).set_requested(u64::from(arg % 5) * MEM_BLOCK);
                    }
                    Dev::Net(d) => lock(d).process_rx(),
                }
            }
        }
        work += guest::moved(lock(&shared).common(), &before);
    }
    work
}

fn make_device(which: u8, disk: &devices::virtio::block::BlockConfig, ram: Arc<GuestRam>) -> Dev {
    match which {
        BLOCK => Dev::Block(Arc::new(Mutex::new(
            Block::new(disk, ram).expect("the disk image opens"),
        ))),
        BALLOON => Dev::Balloon(Arc::new(Mutex::new(
            Balloon::new(
                &BalloonConfig {
                    free_page_reporting: true,
                    deflate_on_oom: true,
                    stats: true,
                    target: None,
                },
                ram,
            )
            .expect("a valid balloon"),
        ))),
        MEM => Dev::Mem(Arc::new(Mutex::new(
            Mem::new(
                &guest::mem_config(2 * MEM_BLOCK),
                GuestAddress(MEM_BASE),
                ram,
            )
            .expect("the virtio-mem region is mapped"),
        ))),
        _ => {
            let config = NetConfig {
                id: "net0".into(),
                tap: guest::TAP_NAME.into(),
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            };
            Dev::Net(Arc::new(Mutex::new(
                Net::with_tap(&config, guest::real_tap(), ram).expect("a unicast MAC"),
            )))
        }
    }
}

/// Register accesses as a driver makes them, in the input's layout.
#[derive(Default)]
pub struct Script {
    b: Builder,
}

impl Script {
    pub fn read(&mut self, offset: u64, width: usize) -> &mut Self {
        let w = WIDTHS
            .iter()
            .position(|&x| x == width)
            .expect("a known width") as u8;
        self.b.u8(w << 2).u16(offset as u16);
        self
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> &mut Self {
        let w = WIDTHS
            .iter()
            .position(|&x| x == data.len())
            .expect("a known width") as u8;
        self.b.u8(w << 2 | 1).u16(offset as u16).bytes(data);
        self
    }

    pub fn write32(&mut self, offset: u64, value: u32) -> &mut Self {
        self.write(offset, &value.to_le_bytes())
    }

    pub fn kick(&mut self, queue: u8) -> &mut Self {
        self.b.u8(2).u16(0).u8(queue);
        self
    }

    pub fn host(&mut self, arg: u8) -> &mut Self {
        self.b.u8(3).u16(0).u8(arg);
        self
    }

    /// Linux's virtio_mmio probe and virtio core's initialisation: identify
    /// the device, negotiate every feature offered, set up `queues`.
    pub fn init(&mut self, features: u64, queues: &[&DriverQueue]) -> &mut Self {
        let ack = u32::from(STATUS_ACKNOWLEDGE);
        let driver = ack | u32::from(STATUS_DRIVER);
        let features_ok = driver | u32::from(STATUS_FEATURES_OK);
        self.read(MAGIC_VALUE_OFFSET, 4).read(VERSION_OFFSET, 4);
        self.write32(STATUS_OFFSET, 0)
            .write32(STATUS_OFFSET, ack)
            .write32(STATUS_OFFSET, driver);
        for page in 0..2u32 {
            self.write32(DEVICE_FEATURES_SEL_OFFSET, page)
                .read(DEVICE_FEATURES_OFFSET, 4)
                .write32(DRIVER_FEATURES_SEL_OFFSET, page)
                .write32(DRIVER_FEATURES_OFFSET, (features >> (32 * page)) as u32);
        }
        self.write32(STATUS_OFFSET, features_ok)
            .read(STATUS_OFFSET, 4);
        for (i, dq) in queues.iter().enumerate() {
            self.write32(QUEUE_SEL_OFFSET, i as u32)
                .read(QUEUE_READY_OFFSET, 4)
                .read(QUEUE_NUM_MAX_OFFSET, 4)
                .write32(QUEUE_NUM_OFFSET, u32::from(dq.size()));
            for (lo, hi, addr) in [
                (
                    QUEUE_DESC_LOW_OFFSET,
                    QUEUE_DESC_HIGH_OFFSET,
                    dq.desc_table().0,
                ),
                (
                    QUEUE_DRIVER_LOW_OFFSET,
                    QUEUE_DRIVER_HIGH_OFFSET,
                    dq.avail_ring().0,
                ),
                (
                    QUEUE_DEVICE_LOW_OFFSET,
                    QUEUE_DEVICE_HIGH_OFFSET,
                    dq.used_ring().0,
                ),
            ] {
                self.write32(lo, addr as u32)
                    .write32(hi, (addr >> 32) as u32);
            }
            self.write32(QUEUE_READY_OFFSET, 1);
        }
        self.write32(STATUS_OFFSET, features_ok | u32::from(STATUS_DRIVER_OK))
    }

    /// The driver taking an interrupt: read the cause, acknowledge it.
    pub fn interrupt(&mut self) -> &mut Self {
        self.read(INTERRUPT_STATUS_OFFSET, 4)
            .write32(INTERRUPT_ACK_OFFSET, 3)
    }

    pub fn build(&mut self) -> Vec<u8> {
        self.b.build()
    }
}

fn seed(which: u8, script: &[u8], mem: &devices::ram::GuestMemoryMmap) -> Vec<u8> {
    let mut b = Builder::new();
    b.u8(which).part(script).bytes(&guest::image_chunks(mem));
    b.build()
}

/// The features `which` offers, all of which the seeds' driver accepts
/// (one that accepts more does not get FEATURES_OK).
fn offered(which: u8) -> u64 {
    let ram = match which {
        MEM => guest::ram_with_mem(),
        _ => guest::boot_ram(),
    };
    let (_image, disk) = guest::disk_image(false);
    match make_device(which, &disk, ram) {
        Dev::Block(d) => lock(&d).common().avail_features,
        Dev::Balloon(d) => lock(&d).common().avail_features,
        Dev::Mem(d) => lock(&d).common().avail_features,
        Dev::Net(d) => lock(&d).common().avail_features,
    }
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();

    // Block: GET_ID and a read, notified through QueueNotify.
    let ram = guest::boot_ram();
    let mem = ram.memory();
    let mut dq = DriverQueue::new(mem, GuestAddress(0x1000), 16);
    let mut get_id = vec![0u8; 16];
    get_id[0] = 8;
    mem.write_slice(&get_id, GuestAddress(0x8000)).unwrap();
    dq.add_chain(&[Buf::r(0x8000, 16), Buf::w(0x8100, 20), Buf::w(0x8200, 1)]);
    mem.write_slice(&[0u8; 16], GuestAddress(0x8300)).unwrap();
    dq.add_chain(&[Buf::r(0x8300, 16), Buf::w(0x9000, 512), Buf::w(0x8400, 1)]);
    let script = Script::default()
        .init(offered(BLOCK), &[&dq])
        .write32(NOTIFY_OFFSET, 0)
        .interrupt()
        .read(CONFIG_SPACE_OFFSET, 8)
        .read(CONFIG_SPACE_OFFSET + 20, 2)
        .read(CONFIG_SPACE_OFFSET + 0x3c, 1)
        .write(CONFIG_SPACE_OFFSET, &[1])
        .build();
    out.push(("block-get-id-and-read", seed(BLOCK, &script, mem)));

    // The same device driven badly: odd widths and offsets, queue setup
    // after DRIVER_OK, a reset in the middle.
    let script = Script::default()
        .read(0x2, 4)
        .read(MAGIC_VALUE_OFFSET, 1)
        .write(STATUS_OFFSET, &[1, 0])
        .write32(STATUS_OFFSET, 0x100)
        .init(offered(BLOCK), &[&dq])
        .write32(QUEUE_NUM_OFFSET, 8)
        .write32(QUEUE_SEL_OFFSET, 7)
        .read(QUEUE_NUM_MAX_OFFSET, 4)
        .write32(NOTIFY_OFFSET, 9)
        .kick(0)
        .write32(STATUS_OFFSET, 0)
        .kick(0)
        .read(0xffe, 4)
        .write(0xff8, &[0; 16])
        .read(CONFIG_SPACE_OFFSET + 4, 3)
        .build();
    out.push(("block-misused", seed(BLOCK, &script, mem)));

    // Balloon: an inflate of three pages and a stats buffer.
    let ram = guest::boot_ram();
    let mem = ram.memory();
    let dqs: Vec<_> = (0..4)
        .map(|i| DriverQueue::new(mem, GuestAddress(0x1000 * (i + 1)), 16))
        .collect();
    let mut dqs = dqs;
    mem.write_slice(
        &[0x30u32, 0x31, 0x40].map(u32::to_le_bytes).concat(),
        GuestAddress(0x8000),
    )
    .unwrap();
    dqs[0].add_chain(&[Buf::r(0x8000, 12)]);
    mem.write_slice(&[4, 0, 1, 0, 0, 0, 0, 0, 0, 0], GuestAddress(0x8100))
        .unwrap();
    dqs[2].add_chain(&[Buf::r(0x8100, 10)]);
    let refs: Vec<&DriverQueue> = dqs.iter().collect();
    let script = Script::default()
        .init(offered(BALLOON), &refs)
        .read(CONFIG_SPACE_OFFSET, 4)
        .kick(0)
        .kick(2)
        .write32(CONFIG_SPACE_OFFSET + 4, 3)
        .host(0)
        .interrupt()
        .build();
    out.push(("balloon-inflate-and-stats", seed(BALLOON, &script, mem)));

    // virtio-mem: plug a block, ask again for more.
    let ram = guest::boot_ram();
    let mem = ram.memory();
    let mut dq = DriverQueue::new(mem, GuestAddress(0x1000), 16);
    let mut plug = vec![0u8; 24];
    plug[8..16].copy_from_slice(&MEM_BASE.to_le_bytes());
    plug[16] = 1;
    mem.write_slice(&plug, GuestAddress(0x8000)).unwrap();
    dq.add_chain(&[Buf::r(0x8000, 24), Buf::w(0x8100, 10)]);
    let script = Script::default()
        .init(offered(MEM), &[&dq])
        .read(CONFIG_SPACE_OFFSET + 40, 8)
        .write32(NOTIFY_OFFSET, 0)
        .host(4)
        .read(CONFIG_SPACE_OFFSET + 48, 4)
        .interrupt()
        .build();
    out.push(("mem-plug", seed(MEM, &script, mem)));

    // Net: a frame to send, an RX buffer, a look at the TAP.
    let ram = guest::boot_ram();
    let mem = ram.memory();
    let mut rx = DriverQueue::new(mem, GuestAddress(0x1000), 16);
    let mut tx = DriverQueue::new(mem, GuestAddress(0x3000), 16);
    rx.add_chain(&[Buf::w(0x8000, 2048)]);
    mem.write_slice(&[0xab; 72], GuestAddress(0x9000)).unwrap();
    tx.add_chain(&[Buf::r(0x9000, 72)]);
    let script = Script::default()
        .init(offered(NET), &[&rx, &tx])
        .read(CONFIG_SPACE_OFFSET, 8)
        .write32(NOTIFY_OFFSET, 1)
        .kick(0)
        .host(0)
        .write32(STATUS_OFFSET, 0)
        .build();
    out.push(("net-tx-rx", seed(NET, &script, mem)));
    out
}
