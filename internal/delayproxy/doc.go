// Package delayproxy is a userspace TCP forwarder that adds a fixed one-way
// delay to the bytes in each direction, so a connection through it sees a
// round-trip time of at least 2×Config.Delay. It stands in for netem where
// the kernel has none: in tests, benchmarks and the benchmark harness.
//
// The delay is latency, not a throughput limit. Each direction of a
// connection is a reader and a writer joined by a queue:
//
//	reader:                              writer:
//	    loop:                                loop:
//	        take BufferSize from the budget      it := queue.pop()
//	          (blocks while MaxInFlight          sleep until it.due
//	          bytes are held: back-pressure)     dst.Write(it.buf)
//	        n := src.Read(buf)                   give cap(it.buf) back
//	        at := now()                          if it is the end:
//	        keep n rounded up to a size class;       dst.CloseWrite() (EOF)
//	          give the rest back                     or reset both (error)
//	        queue.push(buf, due: at+Delay)           stop
//	        on EOF or error: push the end
//	          with due: at+Delay
//
// so a read is released to the other side Delay after it arrived, however
// many reads are in flight, up to MaxInFlight bytes per direction. Every
// byte is held in budgeted memory for at least Delay, so a direction moves
// at most MaxInFlight/Delay bytes per second. Small reads are copied into
// small pooled buffers so the budget counts the memory really held. A
// half-close travels like data: the far side sees EOF once everything read
// before it was written. The connection is closed when both directions
// have ended, when either side fails, or when the proxy is closed.
//
// The TCP handshake is not delayed: the client's connect completes at once
// and the proxy dials the target immediately; only bytes and FINs are.
package delayproxy
