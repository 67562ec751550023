// Package providerfake is a pair of fake chat providers for tests: a
// telegram Bot API that serves sendMessage and a slack Web API that serves
// chat.postMessage and conversations.history, both on httptest servers.
// Each answers from a script of responses, then with success, and records
// every request it received. The slack fake keeps each channel's history:
// the posts it accepted and messages a test adds.
//
// They check credentials the way the real APIs do (a wrong bot token gets
// telegram's 401, a wrong bearer token slack's invalid_auth) and nothing
// else: no rate limits, no chat existence, no payload validation.
package providerfake

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Response is one scripted answer.
type Response struct {
	// Status is the HTTP status; 0 means 200.
	Status int
	// Header is added to the answer (e.g. "Retry-After").
	Header map[string]string
	// Body is sent as is, with Content-Type application/json.
	Body string
}

// Request is one request a fake received.
type Request struct {
	Method string
	// Path is the request path as received; for telegram it holds the
	// token ("/bot<token>/sendMessage").
	Path   string
	Header http.Header
	// JSON is the decoded body; nil if it was not a JSON object.
	JSON map[string]any
	// Form holds the query and a form-encoded body's fields.
	Form url.Values
}

// SlackMessage is one message in a fake slack channel's history.
type SlackMessage struct {
	Channel string
	// TS is its timestamp ("1700000000.000001"), which orders the history.
	TS   string
	Text string
	// Metadata is the post's "metadata" object as sent; nil when none.
	Metadata map[string]any
}

// Server is a running fake provider. Close it when done.
type Server struct {
	*httptest.Server

	mu       sync.Mutex
	script   []Response
	requests []Request
	sent     int // successful answers so far, for ids

	// slack only
	historyScript []Response
	history       []SlackMessage
	lastTS        int64 // microseconds, so that timestamps strictly increase
}

// Requests returns the requests received so far, in arrival order,
// including those rejected for bad credentials.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Script appends responses to the script.
func (s *Server) Script(responses ...Response) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.script = append(s.script, responses...)
}

// NewTelegram starts a fake Bot API for token. POST /bot<token>/sendMessage
// answers with the next scripted response, or, when the script is used up,
// {"ok":true,"result":{"message_id":N,...}} with N counting from 1. Any
// other token gets 401 Unauthorized, any other path 404 Not Found, both as
// telegram words them.
func NewTelegram(token string, script ...Response) *Server {
	s := &Server{script: script}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.record(r)
		rest, ok := strings.CutPrefix(r.URL.Path, "/bot")
		tok, method, _ := strings.Cut(rest, "/")
		switch {
		case !ok || tok != token:
			write(w, TelegramError(http.StatusUnauthorized, "Unauthorized"))
		case method != "sendMessage" || r.Method != http.MethodPost:
			write(w, TelegramError(http.StatusNotFound, "Not Found"))
		default:
			write(w, s.next(func(n int) Response { return TelegramOK(int64(n)) }))
		}
	}))
	return s
}

// NewSlack starts a fake Web API for token; every call needs
// "Authorization: Bearer <token>" (a missing token gets not_authed, a wrong
// one invalid_auth, any other path 404).
//
// POST /api/chat.postMessage answers with the next scripted response, or,
// when the script is used up, accepts the post: it joins the channel's
// history with the current time as its ts, and the answer is
// {"ok":true,"channel":<the request's channel>,"ts":<ts>}.
//
// GET or POST /api/conversations.history answers with the next response
// scripted with ScriptHistory, or else pages through the channel's history
// as the Web API does: newest first, from oldest (inclusive when asked),
// limit messages (default 100) per page with a next_cursor, and each
// message's metadata only with include_all_metadata.
func NewSlack(token string, script ...Response) *Server {
	s := &Server{script: script}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := s.record(r)
		auth := r.Header.Get("Authorization")
		switch {
		case !(r.URL.Path == "/api/chat.postMessage" && r.Method == http.MethodPost) && r.URL.Path != "/api/conversations.history":
			write(w, Response{Status: http.StatusNotFound, Body: `{"ok":false,"error":"unknown_method"}`})
		case auth == "":
			write(w, SlackError("not_authed"))
		case auth != "Bearer "+token:
			write(w, SlackError("invalid_auth"))
		case r.URL.Path == "/api/conversations.history":
			write(w, s.conversationsHistory(req.Form))
		default:
			write(w, s.post(req))
		}
	}))
	return s
}

// post answers a chat.postMessage: scripted, or accepted into the history.
func (s *Server) post(req Request) Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.script) > 0 {
		r := s.script[0]
		s.script = s.script[1:]
		return r
	}
	s.sent++
	channel, _ := req.JSON["channel"].(string)
	text, _ := req.JSON["text"].(string)
	meta, _ := req.JSON["metadata"].(map[string]any)
	ts := s.nextTSLocked()
	s.history = append(s.history, SlackMessage{Channel: channel, TS: ts, Text: text, Metadata: meta})
	return SlackOK(channel, ts)
}

func (s *Server) nextTSLocked() string {
	us := max(time.Now().UnixMicro(), s.lastTS+1)
	s.lastTS = us
	return fmt.Sprintf("%d.%06d", us/1e6, us%1e6)
}

// ScriptHistory appends responses that conversations.history gives before
// it answers from the history again.
func (s *Server) ScriptHistory(responses ...Response) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.historyScript = append(s.historyScript, responses...)
}

// AddMessages adds messages to the history as if others had posted them
// now; an empty TS gets the current time.
func (s *Server) AddMessages(msgs ...SlackMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		if m.TS == "" {
			m.TS = s.nextTSLocked()
		}
		s.history = append(s.history, m)
	}
}

// History returns every message in every channel, oldest first.
func (s *Server) History() []SlackMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := append([]SlackMessage(nil), s.history...)
	slices.SortStableFunc(out, func(a, b SlackMessage) int { return compareTS(a.TS, b.TS) })
	return out
}

func (s *Server) conversationsHistory(form url.Values) Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.historyScript) > 0 {
		r := s.historyScript[0]
		s.historyScript = s.historyScript[1:]
		return r
	}
	channel, oldest := form.Get("channel"), form.Get("oldest")
	inclusive := form.Get("inclusive") == "true" || form.Get("inclusive") == "1"
	withMeta := form.Get("include_all_metadata") == "true" || form.Get("include_all_metadata") == "1"
	limit, err := strconv.Atoi(form.Get("limit"))
	if err != nil || limit <= 0 {
		limit = 100
	}
	limit = min(limit, 999)
	start, _ := strconv.Atoi(strings.TrimPrefix(form.Get("cursor"), "page:"))
	var msgs []SlackMessage
	for _, m := range s.history {
		if m.Channel != channel {
			continue
		}
		if oldest != "" {
			c := compareTS(m.TS, oldest)
			if c < 0 || c == 0 && !inclusive {
				continue
			}
		}
		msgs = append(msgs, m)
	}
	slices.SortStableFunc(msgs, func(a, b SlackMessage) int { return compareTS(b.TS, a.TS) }) // newest first
	start = min(max(start, 0), len(msgs))
	end := min(start+limit, len(msgs))
	page := make([]map[string]any, 0, end-start)
	for _, m := range msgs[start:end] {
		o := map[string]any{"type": "message", "ts": m.TS, "text": m.Text}
		if withMeta && m.Metadata != nil {
			o["metadata"] = m.Metadata
		}
		page = append(page, o)
	}
	ans := map[string]any{"ok": true, "messages": page, "has_more": end < len(msgs), "pin_count": 0}
	if end < len(msgs) {
		ans["response_metadata"] = map[string]any{"next_cursor": fmt.Sprintf("page:%d", end)}
	}
	b, _ := json.Marshal(ans)
	return Response{Body: string(b)}
}

// compareTS orders slack timestamps ("seconds.micros").
func compareTS(a, b string) int {
	parse := func(ts string) (int64, int64) {
		sec, frac, _ := strings.Cut(ts, ".")
		si, _ := strconv.ParseInt(sec, 10, 64)
		fi, _ := strconv.ParseInt((frac + "000000")[:6], 10, 64)
		return si, fi
	}
	as, af := parse(a)
	bs, bf := parse(b)
	if c := cmp.Compare(as, bs); c != 0 {
		return c
	}
	return cmp.Compare(af, bf)
}

// TelegramOK is sendMessage's success answer for message id.
func TelegramOK(messageID int64) Response {
	return Response{Body: fmt.Sprintf(`{"ok":true,"result":{"message_id":%d,"date":1700000000,"chat":{"id":1,"type":"private"},"text":""}}`, messageID)}
}

// TelegramError is a Bot API error answer, with HTTP status = code as the
// real API sends it.
func TelegramError(code int, description string) Response {
	b, _ := json.Marshal(map[string]any{"ok": false, "error_code": code, "description": description})
	return Response{Status: code, Body: string(b)}
}

// SlackOK is chat.postMessage's success answer.
func SlackOK(channel, ts string) Response {
	b, _ := json.Marshal(map[string]any{"ok": true, "channel": channel, "ts": ts, "message": map[string]any{"type": "message", "ts": ts}})
	return Response{Body: string(b)}
}

// SlackError is a Web API error answer: HTTP 200 with "ok": false, as the
// real API sends it.
func SlackError(code string) Response {
	return Response{Body: fmt.Sprintf(`{"ok":false,"error":%q}`, code)}
}

func (s *Server) record(r *http.Request) Request {
	b, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(b))
	req := Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone()}
	_ = json.Unmarshal(b, &req.JSON)
	if r.ParseForm() == nil {
		req.Form = r.Form
	}
	s.mu.Lock()
	s.requests = append(s.requests, req)
	s.mu.Unlock()
	return req
}

// next pops the script, or makes the n-th default success.
func (s *Server) next(success func(n int) Response) Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.script) > 0 {
		r := s.script[0]
		s.script = s.script[1:]
		return r
	}
	s.sent++
	return success(s.sent)
}

func write(w http.ResponseWriter, r Response) {
	for k, v := range r.Header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json")
	status := r.Status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, r.Body)
}
