package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("role") == "any" {
			_, _ = w.Write([]byte("ready"))
			return
		}
		http.Error(w, "not leading", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	if err := probe(context.Background(), srv.URL+"/readyz?role=any"); err != nil {
		t.Fatalf("probe of a ready endpoint: %v", err)
	}
	err := probe(context.Background(), srv.URL+"/readyz")
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "not leading") {
		t.Fatalf("probe of an unready endpoint = %v, want the 503 and its body", err)
	}
	srv.Close()
	if err := probe(context.Background(), srv.URL+"/readyz"); err == nil {
		t.Fatal("probe of a closed server succeeded")
	}
}
