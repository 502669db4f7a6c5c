// PGlite (PostgreSQL 17 in WebAssembly) with TimescaleDB, served over TCP for psycopg.
//
// pglite-socket's own CLI (`pglite-server`) creates `new PGlite(path)` without extensions, so
// it cannot load TimescaleDB: this script creates PGlite with `extensions: { timescaledb }`
// and hands it to pglite-socket's PGLiteSocketServer. Started by devstack/pglite.py:
//
//   node server.mjs --data-dir DIR [--port 0] [--host 127.0.0.1] [--raw-socket] [--init-only]
//                   [--debug]
//
// It prints "pglite-timescale listening on HOST:PORT" once it accepts connections, and stops
// (closing the database cleanly) on SIGTERM or SIGINT, or when its stdin closes, i.e. when the
// process that started it is gone. --init-only creates the data directory and exits.
//
// Unless --raw-socket is given, three fixes to pglite-socket 0.0.19 as published:
//
// - Message framing. pglite-socket hands every TCP read to PGlite as if it held whole protocol
//   messages. Node reads at most 64 KiB at a time, so a client message of 64 KiB or more
//   arrives in pieces, PGlite gets a truncated message and aborts ("RuntimeError:
//   unreachable"), which ends the process. Here the bytes of a connection are buffered and
//   only complete messages are passed on (each message's header holds its length).
// - A fresh session per connection. PGlite is one backend for every connection in turn, so a
//   connection inherits what the one before left: prepared statements (psycopg names its own
//   _pg3_0, _pg3_1, ... in every connection, and the next one gets "prepared statement
//   already exists"), temporary tables, settings, advisory locks, even an open transaction.
//   Before a connection is attached, ROLLBACK and DISCARD ALL reset the session (and the
//   parameters PGlite itself sets for its session are set again).
// - A client that drops its connection abruptly (a reset, e.g. psycopg giving up on a queued
//   connection after connect_timeout) ended the process: the socket error of a queued
//   connection had no listener, and an attached one's rejects a promise nobody handles. Here
//   socket errors (Node system errors: ECONNRESET, EPIPE, ...) are logged and the server goes
//   on to the next connection (which used to wait in the queue until its timeout); any other
//   error still ends the process, as PGlite cannot go on after an abort. A queued client that
//   left before its turn is let go instead of holding PGlite for ever.

import { parseArgs } from 'node:util'
import { PGlite } from '@electric-sql/pglite'
import { timescaledb } from '@electric-sql/pglite/timescaledb'
import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket'

const { values: args } = parseArgs({
  options: {
    'data-dir': { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    'raw-socket': { type: 'boolean', default: false },
    'init-only': { type: 'boolean', default: false },
    debug: { type: 'boolean', default: false },
  },
})
if (!args['data-dir']) {
  console.error('usage: node server.mjs --data-dir DIR [--port 0] [--host 127.0.0.1]')
  process.exit(2)
}

// The protocol version of a StartupMessage (3.0); SSLRequest and GSSENCRequest, which may
// come before it, carry other codes and are answered with one byte, so framing stays untyped.
const STARTUP_PROTOCOL_3 = 196608

function installFraming() {
  const handleData = PGLiteSocketHandler.prototype.handleData
  PGLiteSocketHandler.prototype.handleData = function framedHandleData(chunk) {
    const buffer = this.framingPending ? Buffer.concat([this.framingPending, chunk]) : chunk
    let end = 0
    for (;;) {
      // Before the startup message, messages have no type byte: int32 length, int32 code.
      const typed = this.framingStarted === true
      const header = typed ? 5 : 8
      if (buffer.length - end < header) break
      const length = buffer.readInt32BE(end + (typed ? 1 : 0))
      if (length < 4) {
        end = buffer.length // not a PostgreSQL message: pass it on, PGlite answers the error
        break
      }
      const total = typed ? length + 1 : length
      if (buffer.length - end < total) break
      if (!typed && buffer.readInt32BE(end + 4) === STARTUP_PROTOCOL_3) this.framingStarted = true
      end += total
    }
    // A handler serves one connection, so the state lives on it.
    this.framingPending = end < buffer.length ? Buffer.from(buffer.subarray(end)) : null
    if (end === 0) return Promise.resolve(0)
    const complete = buffer.subarray(0, end)
    // One batch at a time, in order: PGlite answers them in sequence.
    const previous = this.framingQueue ?? Promise.resolve()
    this.framingQueue = previous.then(() => handleData.call(this, complete)).catch(() => 0)
    return this.framingQueue
  }
}

async function installSessionReset(db) {
  // PGlite sets some parameters for its session at start (search_path = public, whose reset
  // value is pg_catalog): DISCARD ALL would reset them too, so they are set again after it.
  const { rows } = await db.query(
    "SELECT name, setting FROM pg_settings WHERE source = 'session' ORDER BY name",
  )
  const attach = PGLiteSocketHandler.prototype.attach
  PGLiteSocketHandler.prototype.attach = async function resetThenAttach(socket) {
    // The handler listens for the socket's close only once it holds PGlite: a client gone
    // before then would hold PGlite for ever and every later connection would wait.
    let closedEarly = false
    const onEarlyClose = () => {
      closedEarly = true
    }
    socket.once('close', onEarlyClose)
    await this.db.waitReady
    // Outside a transaction ROLLBACK only warns; DISCARD ALL cannot run inside one.
    await this.db.exec('ROLLBACK')
    await this.db.exec('DISCARD ALL')
    for (const { name, setting } of rows) {
      await this.db.query('SELECT set_config($1, $2, false)', [name, setting])
    }
    const attached = await attach.call(this, socket)
    socket.off('close', onEarlyClose)
    if (closedEarly || socket.destroyed) this.handleClose() // release PGlite, serve the next
    return attached
  }
}

function installSocketErrorHandling() {
  const handleConnection = PGLiteSocketServer.prototype.handleConnection
  PGLiteSocketServer.prototype.handleConnection = function guardedConnection(socket) {
    socket.on('error', (err) => console.error(`client socket error: ${err.code ?? err}`))
    return handleConnection.call(this, socket)
  }
  // After a socket error the handler lets PGlite go but never says it closed, so the server
  // kept it as the active connection and the queued ones waited for their timeout.
  const handleError = PGLiteSocketHandler.prototype.handleError
  PGLiteSocketHandler.prototype.handleError = function errorThenClose(err) {
    handleError.call(this, err)
    this.dispatchEvent(new CustomEvent('close'))
  }
  process.on('unhandledRejection', (reason) => {
    if (typeof reason?.code === 'string' && typeof reason?.syscall === 'string') {
      console.error(`client connection ended: ${reason.code}; serving the next one`)
      return
    }
    console.error('pglite-timescale: fatal error:', reason)
    process.exit(1)
  })
}

const db = await PGlite.create({ dataDir: args['data-dir'], extensions: { timescaledb } })
if (args['init-only']) {
  await db.close()
  process.exit(0)
}
if (!args['raw-socket']) {
  installFraming()
  await installSessionReset(db)
  installSocketErrorHandling()
}

const server = new PGLiteSocketServer({
  db,
  host: args.host,
  port: Number(args.port),
  debug: args.debug,
})
server.addEventListener('error', (event) => console.error('pglite-socket error:', event.detail))
await server.start()
console.log(`pglite-timescale listening on ${server.getServerConn()}`)

let stopping = false
async function stop(reason) {
  if (stopping) return
  stopping = true
  console.log(`pglite-timescale stopping (${reason})`)
  try {
    await server.stop()
    await db.close()
  } finally {
    process.exit(0)
  }
}
process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))
process.stdin.on('end', () => stop('stdin closed'))
process.stdin.on('error', () => stop('stdin error'))
process.stdin.resume()
