// Command hello is the README's ten-line service: a plain net/http mux
// behind the gateway.
package main

import (
	"fmt"
	"log"
	"net/http"

	"github.com/forwarding-gateway/adapters/go/fwdhttp"
)

func main() {
	http.HandleFunc("/hello/{name}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s\n", r.PathValue("name"))
	})
	cfg := fwdhttp.Config{Service: "hello", Gateway: "http://127.0.0.1:8090"}
	if err := fwdhttp.Run(http.DefaultServeMux, cfg); err != nil {
		log.Fatal(err)
	}
}
