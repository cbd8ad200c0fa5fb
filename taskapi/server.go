package taskapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/taskselector/taskselector/internal/ratelog"
	"github.com/taskselector/taskselector/schemas"
)

// Backend carries out what tasks ask through the API. The exec executor
// implements it. Its methods are called concurrently, each with a task id
// the auth function accepted. An error that is (or wraps) a *Refusal is
// answered 409 with the refusal's code; any other error is answered 500.
type Backend interface {
	// Progress records a task's progress in [0, 1] and its optional metrics.
	Progress(taskID string, progress float64, metrics map[string]any) error
	// Finish records that the task is done (with metrics) or failed (with a
	// reason); the task exits afterwards.
	Finish(taskID string, r Result) error
	// RequestHelpers grants mib more helper RAM and returns the total now
	// granted, or a *Refusal when the grant would exceed the task's budget
	// or the host's free RAM.
	RequestHelpers(taskID string, mib int64) (grantedTotal int64, err error)
	// ReleaseHelpers gives mib of helper RAM back and returns the total
	// still granted.
	ReleaseHelpers(taskID string, mib int64) (grantedTotal int64, err error)
}

// Stats counts the requests a Server answered.
type Stats struct {
	// Requests is every request answered.
	Requests uint64
	// Malformed is requests answered 400, 404, 405, 413 or 415.
	Malformed uint64
	// AuthFailures is requests answered 401 or 403.
	AuthFailures uint64
	// Refused is requests the backend refused (409).
	Refused uint64
	// BackendErrors is requests answered 500.
	BackendErrors uint64
}

// Server is the task API server: HTTP/1.1 on a Unix socket. Create it with
// NewServer, run it with Serve.
type Server struct {
	path string
	ln   *net.UnixListener
	sock os.FileInfo // the socket file as created, to remove only our own
	b    Backend
	auth func(taskID, token string) bool
	log  *slog.Logger
	srv  *http.Server

	serving   atomic.Bool
	closeOnce sync.Once
	closeErr  error

	requests, malformed, authFailures, refused, backendErrors atomic.Uint64
	limiter                                                   ratelog.Limiter // for malformed and unauthorized requests
}

// Timeouts of the server's connections.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	shutdownTimeout   = 2 * time.Second
	// logEvery is how often at most a malformed or unauthorized request is
	// logged.
	logEvery = 5 * time.Second
)

// NewServer listens on the Unix socket socketPath and returns a Server that
// answers with b once Serve runs. A stale socket file at socketPath (one no
// server answers on) is removed first; any other file there, or a live
// socket, is an error. The socket gets mode 0600 (see Chmod). auth must say
// whether token is the secret of task taskID, in constant time (TokenEqual
// helps). log may be nil.
func NewServer(socketPath string, b Backend, auth func(taskID, token string) bool, log *slog.Logger) (*Server, error) {
	if b == nil {
		return nil, errors.New("taskapi: NewServer: nil Backend")
	}
	if auth == nil {
		return nil, errors.New("taskapi: NewServer: nil auth function")
	}
	if socketPath == "" {
		return nil, errors.New("taskapi: NewServer: empty socket path")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := removeStaleSocket(socketPath); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socketPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("taskapi: listen on %s: %w", socketPath, err)
	}
	ln.SetUnlinkOnClose(false) // Close removes the file itself, if still ours
	s := &Server{path: socketPath, ln: ln, b: b, auth: auth, log: log}
	s.limiter.Every = logEvery
	if err := os.Chmod(socketPath, 0o600); err != nil {
		ln.Close()
		os.Remove(socketPath)
		return nil, fmt.Errorf("taskapi: chmod %s: %w", socketPath, err)
	}
	if s.sock, err = os.Lstat(socketPath); err != nil {
		ln.Close()
		return nil, fmt.Errorf("taskapi: stat %s: %w", socketPath, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(PathProgress, s.handleProgress)
	mux.HandleFunc(PathFinish, s.handleFinish)
	mux.HandleFunc(PathHelpersRequest, s.handleHelpersRequest)
	mux.HandleFunc(PathHelpersRelease, s.handleHelpersRelease)
	mux.HandleFunc(PathHelpersFleet, s.handleHelpersFleet)
	mux.HandleFunc("/", s.handleNotFound)
	s.srv = &http.Server{
		Handler:           s.recoverer(mux),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// removeStaleSocket removes a socket file at path that no server answers on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("taskapi: stat %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("taskapi: %s exists and is not a socket", path)
	}
	conn, err := net.DialTimeout("unix", path, 500*time.Millisecond)
	if err == nil {
		conn.Close()
		return fmt.Errorf("taskapi: %s is in use by a live server", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("taskapi: remove stale socket %s: %w", path, err)
	}
	return nil
}

// Path returns the socket's path.
func (s *Server) Path() string { return s.path }

// Chmod sets the socket file's mode, such as 0660 to let a group connect.
func (s *Server) Chmod(mode fs.FileMode) error {
	if err := os.Chmod(s.path, mode); err != nil {
		return fmt.Errorf("taskapi: chmod %s: %w", s.path, err)
	}
	return nil
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{
		Requests:      s.requests.Load(),
		Malformed:     s.malformed.Load(),
		AuthFailures:  s.authFailures.Load(),
		Refused:       s.refused.Load(),
		BackendErrors: s.backendErrors.Load(),
	}
}

// Serve answers requests until ctx ends, then stops (waiting up to 2 s for
// requests in flight), closes the listener and removes the socket file. It
// returns nil when stopped by ctx or Close, and an error if serving failed or
// Serve was already called.
func (s *Server) Serve(ctx context.Context) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("taskapi: Serve called twice")
	}
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	s.log.Info("task API serving", "socket", s.path)
	var err error
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if serr := s.srv.Shutdown(sctx); serr != nil {
			s.srv.Close()
		}
		cancel()
		err = <-errc
	case err = <-errc:
	}
	if cerr := s.Close(); cerr != nil {
		s.log.Warn("task API close", "err", cerr)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("taskapi: serve %s: %w", s.path, err)
	}
	s.log.Info("task API stopped", "socket", s.path)
	return nil
}

// Close stops the server at once (closing open connections) and removes the
// socket file if it is still the one NewServer created. Serve then returns.
// Close may be called more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		err := s.srv.Close()
		if lerr := s.ln.Close(); lerr != nil && !errors.Is(lerr, net.ErrClosed) {
			err = errors.Join(err, lerr)
		}
		if fi, serr := os.Lstat(s.path); serr == nil && os.SameFile(fi, s.sock) {
			if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				err = errors.Join(err, rerr)
			}
		}
		if err != nil {
			s.closeErr = fmt.Errorf("taskapi: close %s: %w", s.path, err)
		}
	})
	return s.closeErr
}

// recoverer answers 500 when a handler (a Backend method) panics, instead
// of dropping the connection.
func (s *Server) recoverer(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("task API handler panicked", "path", r.URL.Path, "panic", v)
				s.backendErrors.Add(1)
				writeJSON(w, http.StatusInternalServerError, ErrorReply{Code: CodeInternal, Message: "internal error"})
			}
		}()
		s.requests.Add(1)
		h.ServeHTTP(w, r)
	})
}

// request reads and checks what every endpoint needs: method, credentials,
// content type and body. It answers the error itself and returns ok false.
func (s *Server) request(w http.ResponseWriter, r *http.Request) (taskID string, body []byte, ok bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.bad(w, r, http.StatusMethodNotAllowed, CodeMethodNotAllowed, "method "+r.Method+" not allowed; use POST")
		return "", nil, false
	}
	taskID, token, problem := credentials(r.Header)
	if problem != "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="taskapi"`)
		s.unauthorized(w, r, http.StatusUnauthorized, CodeUnauthorized, problem, taskID)
		return "", nil, false
	}
	if !s.auth(taskID, token) {
		s.unauthorized(w, r, http.StatusForbidden, CodeForbidden, "token does not match the task", taskID)
		return "", nil, false
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			s.bad(w, r, http.StatusUnsupportedMediaType, CodeUnsupportedMediaType, "content type must be application/json")
			return "", nil, false
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			s.bad(w, r, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("body longer than %d bytes", MaxBodyBytes))
		} else {
			s.bad(w, r, http.StatusBadRequest, CodeBadRequest, "reading body: "+err.Error())
		}
		return "", nil, false
	}
	return taskID, body, true
}

// credentials reads the task id and bearer token from h; problem is empty
// when both are there and well formed.
func credentials(h http.Header) (taskID, token, problem string) {
	taskID = h.Get(HeaderTaskID)
	switch {
	case taskID == "":
		return "", "", HeaderTaskID + " header missing"
	case len(taskID) > schemas.MaxNameBytes || !utf8.ValidString(taskID):
		return "", "", HeaderTaskID + " header malformed"
	}
	auth := h.Get(HeaderAuthorization)
	if auth == "" {
		return taskID, "", HeaderAuthorization + " header missing"
	}
	scheme, token, found := strings.Cut(auth, " ")
	token = strings.TrimSpace(token)
	if !found || !strings.EqualFold(scheme, "Bearer") || token == "" || len(token) > MaxTokenBytes {
		return taskID, "", HeaderAuthorization + " header malformed (want Bearer <token>)"
	}
	return taskID, token, ""
}

func (s *Server) handleNotFound(w http.ResponseWriter, r *http.Request) {
	s.bad(w, r, http.StatusNotFound, CodeNotFound, "no such endpoint "+r.URL.Path)
}

func (s *Server) handleProgress(w http.ResponseWriter, r *http.Request) {
	taskID, body, ok := s.request(w, r)
	if !ok {
		return
	}
	req, err := DecodeProgress(body)
	if err != nil {
		s.bad(w, r, http.StatusBadRequest, CodeBadRequest, err.Error())
		return
	}
	if err := s.b.Progress(taskID, req.Progress, req.Metrics); err != nil {
		s.backendError(w, r, taskID, err)
		return
	}
	writeJSON(w, http.StatusOK, OKReply{OK: true})
}

func (s *Server) handleFinish(w http.ResponseWriter, r *http.Request) {
	taskID, body, ok := s.request(w, r)
	if !ok {
		return
	}
	req, err := DecodeFinish(body)
	if err != nil {
		s.bad(w, r, http.StatusBadRequest, CodeBadRequest, err.Error())
		return
	}
	if err := s.b.Finish(taskID, Result{Done: req.Done, Metrics: req.Metrics, Reason: req.Reason}); err != nil {
		s.backendError(w, r, taskID, err)
		return
	}
	writeJSON(w, http.StatusOK, OKReply{OK: true})
}

func (s *Server) handleHelpersRequest(w http.ResponseWriter, r *http.Request) {
	s.handleHelpers(w, r, s.b.RequestHelpers)
}

func (s *Server) handleHelpersRelease(w http.ResponseWriter, r *http.Request) {
	s.handleHelpers(w, r, s.b.ReleaseHelpers)
}

func (s *Server) handleHelpers(w http.ResponseWriter, r *http.Request, op func(string, int64) (int64, error)) {
	taskID, body, ok := s.request(w, r)
	if !ok {
		return
	}
	req, err := DecodeHelpers(body)
	if err != nil {
		s.bad(w, r, http.StatusBadRequest, CodeBadRequest, err.Error())
		return
	}
	total, err := op(taskID, req.MiB)
	if err != nil {
		s.backendError(w, r, taskID, err)
		return
	}
	writeJSON(w, http.StatusOK, HelpersReply{GrantedMiB: total})
}

// bad answers a malformed request: counted, logged at a limited rate.
func (s *Server) bad(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	s.malformed.Add(1)
	s.limiter.Log(s.log, slog.LevelWarn, "task API: malformed request", "path", r.URL.Path, "status", status, "err", msg)
	writeJSON(w, status, ErrorReply{Code: code, Message: msg})
}

// unauthorized answers a request that failed authentication: counted,
// logged at a limited rate.
func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request, status int, code, msg, taskID string) {
	s.authFailures.Add(1)
	s.limiter.Log(s.log, slog.LevelWarn, "task API: unauthorized request", "path", r.URL.Path, "task_id", taskID, "status", status, "err", msg)
	writeJSON(w, status, ErrorReply{Code: code, Message: msg})
}

// maxErrorMessage bounds the message of a backend error reply.
const maxErrorMessage = 512

// backendError answers a Backend's error: 409 for a refusal, 500 otherwise.
func (s *Server) backendError(w http.ResponseWriter, r *http.Request, taskID string, err error) {
	var ref *Refusal
	if errors.As(err, &ref) {
		s.refused.Add(1)
		code := ref.Code
		if code == "" {
			code = CodeRefused
		}
		s.log.Debug("task API: refused", "path", r.URL.Path, "task_id", taskID, "code", code, "message", ref.Message)
		writeJSON(w, http.StatusConflict, ErrorReply{Code: truncate(code, 64), Message: truncate(ref.Message, maxErrorMessage)})
		return
	}
	s.backendErrors.Add(1)
	s.log.Warn("task API: backend error", "path", r.URL.Path, "task_id", taskID, "err", err)
	writeJSON(w, http.StatusInternalServerError, ErrorReply{Code: CodeInternal, Message: truncate(err.Error(), maxErrorMessage)})
}

// truncate cuts s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil { // cannot happen with the reply types
		data = []byte(`{"code":"internal","message":"encoding reply"}`)
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(data)+1))
	w.WriteHeader(status)
	w.Write(append(data, '\n'))
}
