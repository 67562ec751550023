// Package providerfake is a pair of fake chat providers for tests: a
// telegram Bot API that serves sendMessage and a slack Web API that serves
// chat.postMessage, both on httptest servers. Each answers from a script of
// responses, then with success, and records every request it received.
//
// They check credentials the way the real APIs do (a wrong bot token gets
// telegram's 401, a wrong bearer token slack's invalid_auth) and nothing
// else: no rate limits, no chat existence, no payload validation.
package providerfake

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
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
}

// Server is a running fake provider. Close it when done.
type Server struct {
	*httptest.Server

	mu       sync.Mutex
	script   []Response
	requests []Request
	sent     int // successful answers so far, for ids
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

// NewSlack starts a fake Web API for token. POST /api/chat.postMessage with
// "Authorization: Bearer <token>" answers with the next scripted response,
// or, when the script is used up, {"ok":true,"channel":<the request's
// channel>,"ts":"1700000000.00000N"}. A missing token gets not_authed, a
// wrong one invalid_auth, any other path 404.
func NewSlack(token string, script ...Response) *Server {
	s := &Server{script: script}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := s.record(r)
		auth := r.Header.Get("Authorization")
		switch {
		case r.URL.Path != "/api/chat.postMessage" || r.Method != http.MethodPost:
			write(w, Response{Status: http.StatusNotFound, Body: `{"ok":false,"error":"unknown_method"}`})
		case auth == "":
			write(w, SlackError("not_authed"))
		case auth != "Bearer "+token:
			write(w, SlackError("invalid_auth"))
		default:
			channel, _ := req.JSON["channel"].(string)
			write(w, s.next(func(n int) Response { return SlackOK(channel, fmt.Sprintf("1700000000.%06d", n)) }))
		}
	}))
	return s
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
	req := Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone()}
	_ = json.Unmarshal(b, &req.JSON)
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
