//! A ring of staging buffers for reading small results (per-step losses) back without making
//! the next step wait: each step copies into its own slot, which is mapped asynchronously and
//! read when it is ready or when the slot is needed again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use super::Gpu;
use crate::error::{Error, Result};

const FREE: u8 = 0;
const MAPPING: u8 = 1;
const MAPPED: u8 = 2;
const FAILED: u8 = 3;

struct Slot {
    buffer: wgpu::Buffer,
    state: Arc<AtomicU8>,
    tag: u64,
}

/// Staging ring for one tensor's values, tagged by the caller (e.g. the step number).
pub struct ReadbackRing {
    slots: Vec<Slot>,
    /// Slots in submission order, oldest first.
    queue: VecDeque<usize>,
    next: usize,
    len: usize,
}

impl ReadbackRing {
    /// `slots` staging buffers, each the size of `len` f32.
    pub fn new(gpu: &Gpu, len: usize, slots: usize) -> Self {
        let slots = (0..slots.max(1))
            .map(|i| Slot {
                buffer: gpu.shared.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("readback slot {i}")),
                    size: (len.max(1) * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Arc::new(AtomicU8::new(FREE)),
                tag: 0,
            })
            .collect();
        ReadbackRing {
            slots,
            queue: VecDeque::new(),
            next: 0,
            len,
        }
    }

    /// The staging buffer the next submission should copy into. If that slot still holds an
    /// unread result, it is waited for and returned in `evicted`.
    pub fn reserve(
        &mut self,
        gpu: &Gpu,
        evicted: &mut Vec<(u64, Vec<f32>)>,
    ) -> Result<&wgpu::Buffer> {
        let k = self.next;
        if self.queue.contains(&k) {
            while let Some(front) = self.queue.front().copied() {
                evicted.push(self.take(gpu, front, true)?.expect("waited"));
                if front == k {
                    break;
                }
            }
        }
        Ok(&self.slots[k].buffer)
    }

    /// Record that the submission just made copied `tag`'s values into the reserved slot, and
    /// start mapping it.
    pub fn submitted(&mut self, tag: u64) {
        let k = self.next;
        self.next = (k + 1) % self.slots.len();
        let slot = &mut self.slots[k];
        slot.tag = tag;
        slot.state.store(MAPPING, Ordering::SeqCst);
        let state = slot.state.clone();
        slot.buffer.map_async(wgpu::MapMode::Read, .., move |r| {
            state.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::SeqCst);
        });
        self.queue.push_back(k);
    }

    fn take(&mut self, gpu: &Gpu, k: usize, wait: bool) -> Result<Option<(u64, Vec<f32>)>> {
        let state = self.slots[k].state.clone();
        if wait {
            while state.load(Ordering::SeqCst) == MAPPING {
                gpu.sync()?;
            }
        } else {
            let _ = gpu.shared.device.poll(wgpu::PollType::Poll);
        }
        match state.load(Ordering::SeqCst) {
            MAPPED => {}
            FAILED => {
                return Err(Error::Gpu {
                    context: "reading back a result".into(),
                    message: "mapping the staging buffer failed".into(),
                })
            }
            _ => return Ok(None),
        }
        let slot = &self.slots[k];
        let values = {
            let view = slot.buffer.get_mapped_range(..).map_err(|e| Error::Gpu {
                context: "reading back a result".into(),
                message: e.to_string(),
            })?;
            bytemuck::cast_slice::<u8, f32>(&view)[..self.len].to_vec()
        };
        slot.buffer.unmap();
        state.store(FREE, Ordering::SeqCst);
        self.queue.retain(|&q| q != k);
        Ok(Some((slot.tag, values)))
    }

    /// Every result that is ready, oldest first, without waiting.
    pub fn ready(&mut self, gpu: &Gpu) -> Result<Vec<(u64, Vec<f32>)>> {
        let mut out = Vec::new();
        while let Some(k) = self.queue.front().copied() {
            match self.take(gpu, k, false)? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out)
    }

    /// Every outstanding result, oldest first, waiting for the GPU.
    pub fn drain(&mut self, gpu: &Gpu) -> Result<Vec<(u64, Vec<f32>)>> {
        let mut out = Vec::new();
        while let Some(k) = self.queue.front().copied() {
            out.extend(self.take(gpu, k, true)?);
        }
        Ok(out)
    }
}
