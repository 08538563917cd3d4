//! The ordered ring buffer: order, loss, back-pressure, deadlines and shutdown, with
//! schedules made deterministic by channels and barriers, not sleeps.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use dreamwalk::frame::RgbaImage;
use dreamwalk::pipeline::{Frame, FrameSource, Popped, RingBuffer, RingPolicy};

fn frame(index: u64) -> Frame {
    Frame {
        index,
        image: RgbaImage::new(1, 1).into(),
        source: FrameSource::default(),
    }
}

#[test]
fn workers_finishing_out_of_order_come_out_in_order() {
    let ring = Arc::new(RingBuffer::new(4, RingPolicy::Record, 0));
    // Worker w owns frames w, w+3, w+6, ...; a gate per worker releases one insert at a
    // time and an ack says it landed, so the landing order is exactly 2,1,0, 5,4,3, ...
    let (ack_tx, ack_rx) = bounded::<u64>(0);
    let mut gates = Vec::new();
    let mut workers = Vec::new();
    for w in 0..3u64 {
        let (gate_tx, gate_rx) = bounded::<()>(0);
        gates.push(gate_tx);
        let (ring, ack_tx) = (ring.clone(), ack_tx.clone());
        workers.push(thread::spawn(move || {
            for index in (w..30).step_by(3) {
                gate_rx.recv().unwrap();
                ring.insert(frame(index)).unwrap();
                ack_tx.send(index).unwrap();
            }
        }));
    }
    let consumer = {
        let ring = ring.clone();
        thread::spawn(move || {
            (0..30)
                .map(|_| ring.pop().unwrap().index)
                .collect::<Vec<_>>()
        })
    };
    let mut landed = Vec::new();
    for _round in 0..10 {
        for w in [2usize, 1, 0] {
            gates[w].send(()).unwrap();
            landed.push(ack_rx.recv().unwrap());
        }
    }
    assert_eq!(
        &landed[..6],
        &[2, 1, 0, 5, 4, 3],
        "frames landed out of order"
    );
    let seen = consumer.join().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(seen, (0..30).collect::<Vec<_>>());
}

#[test]
fn record_policy_loses_nothing_with_a_slow_consumer() {
    const N: u64 = 10_000;
    let ring = Arc::new(RingBuffer::new(8, RingPolicy::Record, 0));
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let ring = ring.clone();
            thread::spawn(move || {
                for i in (p..N).step_by(2) {
                    ring.insert(frame(i)).unwrap();
                }
            })
        })
        .collect();
    let mut expected = 0;
    let mut max_fill = 0;
    while expected < N {
        let f = ring.pop().unwrap();
        assert_eq!(f.index, expected, "frames must come in order with no gap");
        max_fill = max_fill.max(ring.fill());
        expected += 1;
        if expected % 1000 == 0 {
            // A slow consumer now and then: producers must wait, not drop.
            thread::yield_now();
        }
    }
    for p in producers {
        p.join().unwrap();
    }
    assert!(max_fill <= 8, "memory bounded by capacity, saw {max_fill}");
    assert_eq!(ring.fill(), 0);
}

#[test]
fn display_policy_pops_on_deadline_and_never_reorders() {
    let ring = Arc::new(RingBuffer::new(2, RingPolicy::Display, 0));
    // Nothing there: a deadline pop reports Late at (not before) its deadline.
    let deadline = Instant::now() + Duration::from_millis(20);
    assert!(matches!(ring.pop_by(deadline), Popped::Late));
    assert!(Instant::now() >= deadline);
    // Frame 1 before frame 0: still Late until 0 lands, then 0, then 1.
    ring.insert(frame(1)).unwrap();
    assert!(matches!(ring.pop_by(Instant::now()), Popped::Late));
    ring.insert(frame(0)).unwrap();
    for expected in 0..2 {
        match ring.pop_by(Instant::now() + Duration::from_secs(5)) {
            Popped::Frame(f) => assert_eq!(f.index, expected),
            other => panic!("expected frame {expected}, got {other:?}"),
        }
    }
}

#[test]
fn display_policy_does_not_block_the_producer_forever() {
    // A producer much faster than a 500 fps display consumer: it waits at most a few
    // periods per frame and all 200 frames get through, in order.
    let ring = Arc::new(RingBuffer::new(3, RingPolicy::Display, 0));
    let producer = {
        let ring = ring.clone();
        thread::spawn(move || (0..200).for_each(|i| ring.insert(frame(i)).unwrap()))
    };
    let mut deadline = Instant::now();
    let mut next = 0;
    while next < 200 {
        deadline += Duration::from_millis(2);
        if let Popped::Frame(f) = ring.pop_by(deadline) {
            assert_eq!(f.index, next);
            next += 1;
        }
    }
    producer.join().unwrap();
}

#[test]
fn close_wakes_blocked_producers_and_consumers() {
    let ring = Arc::new(RingBuffer::new(1, RingPolicy::Record, 0));
    ring.insert(frame(0)).unwrap();
    let barrier = Arc::new(Barrier::new(3));
    // A producer blocked on a full ring, a consumer blocked on a missing frame (index 5
    // of another ring would never come; here the consumer waits after draining frame 0).
    let producer = {
        let (ring, barrier) = (ring.clone(), barrier.clone());
        thread::spawn(move || {
            barrier.wait();
            ring.insert(frame(1))
        })
    };
    let other = Arc::new(RingBuffer::new(1, RingPolicy::Record, 0));
    let consumer = {
        let (other, barrier) = (other.clone(), barrier.clone());
        thread::spawn(move || {
            barrier.wait();
            other.pop()
        })
    };
    barrier.wait();
    ring.close();
    other.close();
    assert!(
        producer.join().unwrap().is_err(),
        "insert after close fails"
    );
    assert!(consumer.join().unwrap().is_none(), "pop after close ends");
    // What was already in the ring still drains, in order.
    assert_eq!(ring.pop().unwrap().index, 0);
    assert!(ring.pop().is_none());
}
