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
        image: Arc::new(RgbaImage::new(1, 1)),
        source: FrameSource::default(),
    }
}

#[test]
fn workers_finishing_out_of_order_come_out_in_order() {
    let ring = Arc::new(RingBuffer::new(4, RingPolicy::Record, 0));
    // Three workers; each gets its jobs from a FIFO queue and a gate per job that releases
    // them in a scrambled order, so later frames land before earlier ones.
    let (jobs_tx, jobs_rx) = bounded::<u64>(64);
    let gates: Vec<_> = (0..3).map(|_| bounded::<()>(64)).collect();
    let mut workers = Vec::new();
    for (w, (_, gate_rx)) in gates.iter().enumerate() {
        let (ring, jobs_rx, gate_rx) = (ring.clone(), jobs_rx.clone(), gate_rx.clone());
        workers.push(thread::spawn(move || {
            let mut mine = Vec::new();
            for index in jobs_rx.iter() {
                if index % 3 == w as u64 {
                    mine.push(index);
                }
            }
            // Finish in reverse order of taking.
            for index in mine.into_iter().rev() {
                gate_rx.recv().unwrap();
                ring.insert(frame(index)).unwrap();
            }
        }));
    }
    for i in 0..30 {
        jobs_tx.send(i).unwrap();
    }
    drop(jobs_tx);
    // Open the gates one at a time in a worker order that keeps scrambling completions.
    let opener = {
        let senders: Vec<_> = gates.iter().map(|(tx, _)| tx.clone()).collect();
        thread::spawn(move || {
            for round in 0..10 {
                for w in [2, 0, 1] {
                    let _ = round;
                    senders[w].send(()).unwrap();
                }
            }
        })
    };
    let consumer = {
        let ring = ring.clone();
        thread::spawn(move || (0..30).map(|_| ring.pop().unwrap().index).collect::<Vec<_>>())
    };
    let seen = consumer.join().unwrap();
    opener.join().unwrap();
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
    assert!(producer.join().unwrap().is_err(), "insert after close fails");
    assert!(consumer.join().unwrap().is_none(), "pop after close ends");
    // What was already in the ring still drains, in order.
    assert_eq!(ring.pop().unwrap().index, 0);
    assert!(ring.pop().is_none());
}
