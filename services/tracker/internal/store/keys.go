package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Every key family of the store, one prefix byte each. Integers are
// fixed-width big-endian so that byte order is numeric order. Strings inside
// keys (tenant, conversation, channel, recipient) never contain 0x00: the
// store rejects them, so 0x00 can end them. Message ids are ULIDs in their
// 26-character text form.
//
// Changing the shape of any key or the encoding of any value requires a new
// schemaVersion.
const (
	// prefixMeta | name → value. Names: "schema" → uint32.
	prefixMeta byte = 0x01
	// prefixMessage | id[26] → storev1.Message. Written once, at Accept.
	prefixMessage byte = 0x02
	// prefixDelivery | id[26] → storev1.Delivery. The message's state.
	prefixDelivery byte = 0x03
	// prefixRecovery | kind[1] | ... → channel | 0x00 | tenant | 0x00 |
	// conversation | 0x00 | sequence[8] (schema 4; before, no 0x00 |
	// sequence). The recovery index: every non-terminal message is in it
	// exactly once, under one kind:
	//   recoveryDue     | due[8] | id[26]     PENDING, leasable from due
	//   recoveryLeased  | expiry[8] | id[26]  IN_FLIGHT until its lease expires
	//   recoveryUnknown | at[8] | id[26]      UNKNOWN, awaiting its policy: at
	//                                         is when the provider may next be
	//                                         asked (reconcile_at), or for
	//                                         records older than reconcile,
	//                                         unknown-since
	//   recoveryReconciling | expiry[8] | id[26]
	//                                         UNKNOWN under a reconcile lease
	//                                         until the lease expires
	//   recoveryBlocked | id[26]              PENDING behind an earlier message
	//                                         of its conversation
	// Terminal states are never in it: leaving it and entering a terminal
	// state happen in one batch. Its entries are also each conversation's
	// active (non-terminal) messages, by sequence: Open builds the
	// conversations' active sets from them.
	prefixRecovery byte = 0x04
	// prefixIdempotency | tenant | 0x00 | key → id.
	prefixIdempotency byte = 0x05
	// prefixConvSeq | tenant | 0x00 | conversation | 0x00 → last sequence[8].
	prefixConvSeq byte = 0x06
	// 0x07 held each conversation's non-terminal messages (tenant | 0x00 |
	// conversation | 0x00 | seq[8] → id) up to schema 3; the recovery index
	// holds the same since schema 4, and the upgrade deletes the range.
	// Never reuse it.
	prefixConvActiveRetired byte = 0x07
	// prefixConvHistory | tenant | 0x00 | conversation | 0x00 | seq[8] → id.
	prefixConvHistory byte = 0x08
	// prefixRecipient | tenant | 0x00 | recipient | 0x00 | id[26] → empty.
	// Ids are ULIDs, so a recipient's messages sort by acceptance time
	// across channels.
	prefixRecipient byte = 0x09
	// prefixEvent | seq[8] → storev1.Event. The global event log: sequences
	// strictly increase; a crash may leave holes where unacknowledged
	// batches were lost.
	prefixEvent byte = 0x0a
	// prefixTimeline | id[26] | seq[8] → empty: one message's events, by
	// their sequence in the event log, where its delivery record does not
	// list them (schema 3: events of a batch that did not rewrite the
	// delivery; before, every event; stores written before schema 2's last
	// change hold a copy of the storev1.Event). All are read.
	prefixTimeline byte = 0x0b
	// prefixDeadLetter | failedAt[8] | id[26] → empty. FAILED messages.
	prefixDeadLetter byte = 0x0c
	// prefixCount | state[1] → int64 little-endian, combined by the counter
	// merge operator. Messages per state.
	prefixCount byte = 0x0d
	// prefixReply | id[26] → storev1.Reply. A streamed reply.
	prefixReply byte = 0x0e
	// prefixReplyChunk | reply id[26] | index[4] → chunk message id.
	prefixReplyChunk byte = 0x0f
)

// Kinds of recovery-index entries.
const (
	recoveryDue     byte = 1
	recoveryLeased  byte = 2
	recoveryUnknown byte = 3
	recoveryBlocked byte = 4
	// recoveryReconciling was added without a schema change: a store
	// written before it simply has no such entries.
	recoveryReconciling byte = 5
)

// schemaVersion is the on-disk format this build reads and writes.
//
//	1  the first format
//	2  reconciliation: the recoveryReconciling kind, recoveryUnknown keyed by
//	   reconcile_at. A version 1 store is a valid version 2 store (an
//	   UNKNOWN record without reconcile_at is keyed by unknown-since, as
//	   before), so Open upgrades it by rewriting the version key; a build
//	   that reads only version 1 then refuses the store instead of
//	   misreading it.
//	3  a message's timeline in its delivery record (event_sequences), not
//	   in a timeline key per event; timeline keys remain for events of a
//	   batch that does not rewrite the delivery (a purge). A version 2
//	   store is a valid version 3 store (a timeline is read from both), so
//	   Open upgrades it in place; a version 2 build would miss the events
//	   in delivery records, and refuses it.
//	4  no conversation-active keys: a recovery-index entry carries its
//	   message's sequence, and Open builds each conversation's active
//	   messages from the index. Open upgrades an older store in place: it
//	   gives each index entry its message's sequence, then deletes the
//	   retired range with the version key in one synced batch (see
//	   Store.upgrade). A version 3 build would find no active messages, and
//	   refuses the store.
const schemaVersion uint32 = 4

const idLen = 26

var metaSchemaKey = []byte{prefixMeta, 's', 'c', 'h', 'e', 'm', 'a'}

func messageKey(id string) []byte  { return idKey(prefixMessage, id) }
func deliveryKey(id string) []byte { return idKey(prefixDelivery, id) }

func idKey(prefix byte, id string) []byte {
	k := make([]byte, 0, 1+len(id))
	return append(append(k, prefix), id...)
}

func recoveryKey(kind byte, at int64, id string) []byte {
	k := make([]byte, 0, 2+8+len(id))
	k = append(k, prefixRecovery, kind)
	if kind != recoveryBlocked {
		k = binary.BigEndian.AppendUint64(k, uint64(at))
	}
	return append(k, id...)
}

// parseRecoveryKey splits a recovery-index key into its kind, time and id.
func parseRecoveryKey(k []byte) (kind byte, at int64, id string, err error) {
	if len(k) < 2 || k[0] != prefixRecovery {
		return 0, 0, "", fmt.Errorf("recovery key %x: bad prefix", k)
	}
	kind = k[1]
	if kind < recoveryDue || kind > recoveryReconciling {
		return 0, 0, "", fmt.Errorf("recovery key %x: unknown kind %d", k, kind)
	}
	rest := k[2:]
	if kind != recoveryBlocked {
		if len(rest) != 8+idLen {
			return 0, 0, "", fmt.Errorf("recovery key %x: bad length", k)
		}
		at = int64(binary.BigEndian.Uint64(rest))
		rest = rest[8:]
	}
	if len(rest) != idLen {
		return 0, 0, "", fmt.Errorf("recovery key %x: bad length", k)
	}
	return kind, at, string(rest), nil
}

// recoveryValue is what a recovery-index entry carries, so that leasing can
// respect channel limits and conversation locks without reading the
// message, and Open can rebuild the conversations' active sets.
func recoveryValue(channel, tenant, conversation string, seq uint64) []byte {
	v := make([]byte, 0, len(channel)+len(tenant)+len(conversation)+3+8)
	v = append(v, channel...)
	v = append(v, 0)
	v = append(v, tenant...)
	v = append(v, 0)
	v = append(v, conversation...)
	v = append(v, 0)
	return binary.BigEndian.AppendUint64(v, seq)
}

// recoveryFields is a parsed recovery-index value. seq is 0 in a value
// written before schema 4, which did not carry it (Store.upgrade gives it
// one).
type recoveryFields struct {
	channel, tenant, conversation string
	seq                           uint64
}

func parseRecoveryValue(v []byte) (recoveryFields, error) {
	var f recoveryFields
	// channel and tenant end at a 0x00; the conversation, which holds no
	// 0x00, at the next one, which the 8-byte sequence follows.
	i := bytes.IndexByte(v, 0)
	j := -1
	if i >= 0 {
		j = bytes.IndexByte(v[i+1:], 0)
	}
	if i < 0 || j < 0 {
		return f, fmt.Errorf("recovery value %q: want channel, tenant and conversation", v)
	}
	j += i + 1
	f.channel, f.tenant = string(v[:i]), string(v[i+1:j])
	rest := v[j+1:]
	k := bytes.IndexByte(rest, 0)
	if k < 0 {
		f.conversation = string(rest) // before schema 4
		return f, nil
	}
	if len(rest) != k+1+8 {
		return f, fmt.Errorf("recovery value %q: want an 8-byte sequence after the conversation", v)
	}
	f.conversation, f.seq = string(rest[:k]), binary.BigEndian.Uint64(rest[k+1:])
	if f.seq == 0 {
		return f, fmt.Errorf("recovery value %q: sequence 0", v)
	}
	return f, nil
}

func idempotencyKey(tenant, key string) []byte {
	k := make([]byte, 0, 2+len(tenant)+len(key))
	k = append(k, prefixIdempotency)
	k = append(k, tenant...)
	k = append(k, 0)
	return append(k, key...)
}

// convPrefix is tenant | 0x00 | conversation | 0x00 under a family prefix.
func convPrefix(prefix byte, tenant, conversation string) []byte {
	k := make([]byte, 0, 3+len(tenant)+len(conversation)+8)
	k = append(k, prefix)
	k = append(k, tenant...)
	k = append(k, 0)
	k = append(k, conversation...)
	return append(k, 0)
}

func convSeqKey(tenant, conversation string) []byte {
	return convPrefix(prefixConvSeq, tenant, conversation)
}

func convSeqEntryKey(prefix byte, tenant, conversation string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(convPrefix(prefix, tenant, conversation), seq)
}

func recipientPrefix(tenant, recipient string) []byte {
	k := make([]byte, 0, 3+len(tenant)+len(recipient)+idLen)
	k = append(k, prefixRecipient)
	k = append(k, tenant...)
	k = append(k, 0)
	k = append(k, recipient...)
	return append(k, 0)
}

func eventKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixEvent}, seq)
}

// parseEventKey returns an event key's sequence.
func parseEventKey(k []byte) (uint64, error) {
	if len(k) != 9 || k[0] != prefixEvent {
		return 0, fmt.Errorf("event key %x: bad length or prefix", k)
	}
	return binary.BigEndian.Uint64(k[1:]), nil
}

func timelineKey(id string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(idKey(prefixTimeline, id), seq)
}

func deadLetterKey(at int64, id string) []byte {
	k := binary.BigEndian.AppendUint64([]byte{prefixDeadLetter}, uint64(at))
	return append(k, id...)
}

func countKey(state byte) []byte { return []byte{prefixCount, state} }

func replyKey(id string) []byte { return idKey(prefixReply, id) }

func replyChunkKey(id string, index uint32) []byte {
	return binary.BigEndian.AppendUint32(idKey(prefixReplyChunk, id), index)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}
